"""Raises PredictionException("bad thing", 513) unless the request says {"fail": false}."""
from ts.utils.util import PredictionException


def handle(data, context):
    if data is None:
        return None
    if any(row.get("body", {}).get("fail", True) for row in data):
        raise PredictionException("bad thing", 513)
    return ["fine" for _ in data]
