"""Tests of imgstore.services.health: pings, the tracker, the pinger child."""
