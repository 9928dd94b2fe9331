"""Handlers and the model generator used by scripts/bench (archived for both servers)."""
