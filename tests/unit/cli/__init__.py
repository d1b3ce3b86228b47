"""Tests of imgstore.cli: the command line."""
