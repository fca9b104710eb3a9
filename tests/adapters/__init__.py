"""Tests of wsfleet.adapters: each adapter over real sockets, and the shared adapter suite."""
