"""Tests of imgstore.services.catalog: queries, the state machine, tags."""
