"""Tests of scripts/: the dev tooling (devcluster.sh)."""
