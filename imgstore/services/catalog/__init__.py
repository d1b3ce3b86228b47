"""Every Queryable: the query runner, the Enabled/Disabled state machine, tags."""
