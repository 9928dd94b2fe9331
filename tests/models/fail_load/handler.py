"""Fails at load: imports a module that does not exist."""
import torchd_no_such_module  # noqa: F401


def handle(data, context):
    return data
