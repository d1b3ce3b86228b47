"""The HTTP routes, one module per ZStack resource; thin: parse, call a service, answer."""
