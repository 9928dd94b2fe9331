"""Raises a plain ValueError."""


def handle(data, context):
    if data is None:
        return
    raise ValueError("plain failure")
