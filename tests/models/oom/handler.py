"""Raises MemoryError."""


def handle(data, context):
    if data is None:
        return
    raise MemoryError("pretend the model ran out of memory")
