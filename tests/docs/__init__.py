"""Tests that the docs and the examples say what the code does."""
