"""Real workers send what their handler recorded with each batch's RESULT frame: TorchServe's
PredictionTime for every handler, BaseHandler's HandlerTime, nothing twice."""
from __future__ import annotations

import pytest

from tests.worker.harness import json_request

pytestmark = pytest.mark.timeout(120)


def by_name(result: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for record in result.get("metrics") or []:
        found.setdefault(record["name"], []).append(record)
    return found


def test_function_handler_gets_prediction_time_in_each_result(loaded):
    worker = loaded("noop")
    for request_id in ("r1", "r2"):
        _, result = worker.predict([json_request(request_id, {"x": 1})])
        [timing] = by_name(result).pop("PredictionTime")
        assert by_name(result).keys() == {"PredictionTime"}
        assert (timing["unit"], timing["type"]) == ("Milliseconds", "gauge")
        assert timing["dimensions"] == [["ModelName", "noop"], ["Level", "Model"]]
        assert 0 <= timing["value"] < 10_000


def test_base_handler_adds_handler_time(loaded):
    worker = loaded("mlp_script", batch_size=2)
    _, result = worker.predict([json_request("a", {"data": [1.0, 2.0, 3.0, 4.0]}),
                                json_request("b", {"data": [4.0, 3.0, 2.0, 1.0]})])
    assert all(not r["error"] for r in result["responses"]), result
    records = by_name(result)
    assert sorted(records) == ["HandlerTime", "PredictionTime"]
    [handler_time] = records["HandlerTime"]
    assert handler_time["dimensions"] == [["ModelName", "mlp_script"], ["Level", "Model"]]
    assert handler_time["value"] <= records["PredictionTime"][0]["value"]
