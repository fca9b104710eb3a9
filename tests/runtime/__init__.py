"""Tests of wsfleet._runtime's parts, each built and driven alone."""
