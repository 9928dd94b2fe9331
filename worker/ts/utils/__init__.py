"""Helpers handlers import from ``ts.utils``."""
