"""Needs a package that only its archive's requirements file brings (install_py_dep_per_model)."""
import tinydep


def handle(data, context):
    if data is None:
        return None
    return [{"value": tinydep.VALUE, "from": tinydep.__file__} for _ in data]
