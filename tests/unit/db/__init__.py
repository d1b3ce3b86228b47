"""Tests of imgstore.db: the schema, its migrations, queries and the database's version."""
