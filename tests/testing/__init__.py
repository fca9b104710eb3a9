"""Tests of the test helpers: wsfleet.testing's storm and the throw-away redis-server."""
