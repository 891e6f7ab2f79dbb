"""Helpers shared by the tests and scripts that need a source checkout."""
