"""Real workers send what their handler recorded with each batch's RESULT frame: TorchServe's
PredictionTime for every handler, BaseHandler's HandlerTime, nothing twice."""
from __future__ import annotations

import pytest

from protocol import messages
from protocol.frames import ProtocolError, encode_frame
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


def test_metrics_give_way_to_an_answer_that_fits_the_frame_only_without_them(loaded):
    limit = 1000
    # the largest body whose RESULT fits without metrics, less a little for the batch id
    size = max(n for n in range(limit) if _fits(n, limit)) - 10
    assert not _fits(size, limit, with_metrics=True)
    worker = loaded("big", max_response_size=limit)
    _, result = worker.predict([json_request("r", {"size": size})])
    [response] = result["responses"]
    assert (response["status"], len(response["body"])) == (200, size)
    assert "metrics" not in result
    _, result = worker.predict([json_request("r", {"size": 10})])
    assert [r["name"] for r in result["metrics"]] == ["PredictionTime"]   # and back again


def _fits(size: int, limit: int, with_metrics: bool = False) -> bool:
    metrics = [messages.metric("PredictionTime", "Milliseconds", "gauge", 0.05,
                               [["ModelName", "big"], ["Level", "Model"]])]
    answer = messages.response("r", 200, "OK", b"x" * size)
    try:
        encode_frame(messages.result(1, [answer], metrics if with_metrics else None), limit)
    except ProtocolError:
        return False
    return True
