"""Tests of wsfleet.policies: retry, heartbeat, overflow and backpressure settings."""
