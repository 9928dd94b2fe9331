"""Helpers handlers import from ``ts.handler_utils``."""
