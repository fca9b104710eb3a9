"""Tests of wsfleet.demo: the demo server, and the page driven in a browser."""
