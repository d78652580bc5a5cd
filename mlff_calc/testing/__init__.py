"""Reusable checks for force-field calculators (physics) and small structure builders for tests."""
