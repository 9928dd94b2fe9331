"""Handlers: ``BaseHandler`` lives in ``base_handler``."""
