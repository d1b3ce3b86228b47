"""Tests of imgstore.services.node: runtime, handles, leases, sessions, membership."""
