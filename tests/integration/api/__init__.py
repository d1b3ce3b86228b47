"""Tests of imgstore.api: routes, envelopes, kept replies, job answers."""
