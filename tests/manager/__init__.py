"""Tests of ConnectionManager: its API, fan-out, callbacks, heartbeat, retry and backpressure."""
