"""Custom metrics recorded by handlers through ``context.metrics``."""
