"""Test support shared by the adapter suites (no framework imported here)."""
