"""Tests of wsfleet.fsm: the transition table, the per-connection machine and its properties."""
