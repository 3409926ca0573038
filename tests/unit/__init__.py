"""Unit tests: no daemons beyond loopback peers the tests start themselves."""
