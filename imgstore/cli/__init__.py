"""The ``imgstore`` command line: ZStack-style words over the client."""
