"""Tests of wsfleet.backplane: the wire, the hub, nodes, the view, the store, and accounting."""
