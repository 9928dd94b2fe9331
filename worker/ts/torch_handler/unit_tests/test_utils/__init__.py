"""Helpers for testing a handler without a server (``MockContext``)."""
