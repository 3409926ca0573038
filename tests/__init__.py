"""The test suite: unit tests (tests/unit), integration tests (tests/integration) and the
helpers both share (tests/support)."""
