"""Pure pieces of the worker, in-process: handler strings, codec, Context, metrics, ts alias."""
from __future__ import annotations

import collections.abc
import enum
import json
import subprocess
import sys
from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import codec
from worker.service import HandlerLoadError, parse_handler
from worker.runtime.context import Context
from worker.runtime.streaming import send_intermediate_predict_response
from worker.runtime.dimension import Dimension
from worker.runtime.metric_type_enum import MetricTypes
from worker.runtime.recorder import MetricsRecorder
from worker.ts.handler_utils.utils import import_class
from worker.ts.utils.util import (CLEANUP_REGEX, PredictionException, get_yaml_config,
                                  map_class_to_label)


@pytest.mark.parametrize(("handler", "expected"), [
    ("handler", ("handler", None)),
    ("handler.py", ("handler", None)),
    ("handler:entry", ("handler", "entry")),
    ("/abs/path/my_handler.py", ("my_handler", None)),
    ("rel/dir/my_handler.py:fn", ("my_handler", "fn")),
    ("handler:", ("handler", None)),
])
def test_parse_handler(handler, expected):
    assert parse_handler(handler) == expected


def test_parse_handler_rejects_empty():
    with pytest.raises(HandlerLoadError):
        parse_handler(":fn")


@pytest.mark.parametrize(("content_type", "value", "expected"), [
    ("application/json", b'{"a": [1, 2]}', {"a": [1, 2]}),
    ("application/json; charset=utf-8", b"[1]", [1]),
    ("Application/JSON", b'"s"', "s"),
    ("application/json", b"{bad", bytearray(b"{bad")),
    ("text/plain", "é".encode(), "é"),
    ("text/csv; charset=utf-8", b"a,b", "a,b"),
    ("text/plain", b"\xff\xfe\xfd", bytearray(b"\xff\xfe\xfd")),
    ("image/png", b"\x89PNG", bytearray(b"\x89PNG")),
    (None, b"raw", bytearray(b"raw")),
])
def test_decode_value(content_type, value, expected):
    decoded = codec.decode_value(content_type, value)
    assert decoded == expected and type(decoded) is type(expected)


def test_decode_request_and_headers():
    request = {"id": "r", "headers": [["X-A", "1"], ["b", "2"]],
               "parameters": [{"name": "body", "content_type": "application/json",
                               "value": b"{}"}, {"name": "f", "content_type": None,
                                                 "value": b"x"}]}
    assert codec.decode_request(request) == {"body": {}, "f": bytearray(b"x")}
    assert codec.request_headers(request) == {"X-A": "1", "b": "2"}


@pytest.mark.parametrize(("value", "expected"), [
    (b"\x00raw", b"\x00raw"),
    (bytearray(b"ba"), b"ba"),
    ("héllo", "héllo".encode()),
    ({"a": 1}, b'{\n  "a": 1\n}'),
    ([1, 2], b"[\n  1,\n  2\n]"),
    (None, b"null"),
    (3, b"3"),
])
def test_encode_body(value, expected):
    assert codec.encode_body(value) == expected


def test_encode_body_refuses_unserializable():
    with pytest.raises(TypeError):
        codec.encode_body(object())


class Level(enum.IntEnum):
    HIGH = 3


def nested(depth: int) -> list:
    """[[[...[1]...]]]: deeper than the fast path goes."""
    value: list = [1]
    for _ in range(depth):
        value = [value]
    return value


JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text()
                | st.integers(min_value=-10**30, max_value=10**30))
JSON_KEYS = st.text() | st.integers() | st.floats() | st.booleans() | st.none()
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (st.lists(inner, max_size=5) | st.lists(inner, max_size=3).map(tuple)
                   | st.dictionaries(st.text(), inner, max_size=5)
                   | st.dictionaries(JSON_KEYS, inner, max_size=3)),
    max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(JSON_VALUES)
def test_indented_json_is_exactly_json_dumps(value):
    assert codec.indented_json(value) == json.dumps(value, indent=2)


@pytest.mark.parametrize("value", [
    {}, [], (), {"a": {}}, [[]], float("nan"), [float("inf"), float("-inf")], -0.0, 1e300,
    {"é": "\u2028\x00"}, {1: "int key", None: 1, False: 2, 1.5: 3}, Level.HIGH, [Level.HIGH],
    OrderedDict(b=1, a=2), {"deep": nested(40)},
])
def test_indented_json_edge_cases(value):
    assert codec.indented_json(value) == json.dumps(value, indent=2)


def test_indented_json_reports_what_json_dumps_reports():
    cyclic: list = []
    cyclic.append(cyclic)
    for value, error in [(cyclic, ValueError), ({"x": object()}, TypeError),
                         ({(1, 2): "tuple key"}, TypeError)]:
        with pytest.raises(error) as expected:
            json.dumps(value, indent=2)
        with pytest.raises(error) as got:
            codec.indented_json(value)
        assert str(got.value) == str(expected.value)


def test_default_reason():
    assert codec.default_reason(200) == "OK"
    assert codec.default_reason(507) == "Insufficient Storage"
    assert codec.default_reason(599) == ""


def test_failure_status():
    assert codec.failure_status(PredictionException("bad thing", 513)) == (513, "bad thing")
    assert codec.failure_status(PredictionException("default")) == (500, "default")
    assert codec.failure_status(MemoryError()) == (507, "Out of resources")
    assert codec.failure_status(ValueError("x")) == (503, "Prediction failed")

    class PredictionException2(Exception):
        error_code = 400
    PredictionException2.__name__ = "PredictionException"  # e.g. the real TorchServe class
    assert codec.failure_status(PredictionException2("from ts")) == (400, "from ts")


def test_prediction_exception_fields():
    exc = PredictionException("msg", 418)
    assert (exc.message, exc.error_code, str(exc)) == ("msg", 418, "msg : 418")


def make_context() -> Context:
    context = Context("m", "/models/m", {"model": {"modelName": "m"}}, 2, None, "1.2.3",
                      model_yaml_config={"k": 1})
    context.begin_batch(["id0", "id1"], [{"Content-Type": "a/b"}, {"x-test": "v"}])
    return context


def test_context_properties_and_request_headers():
    context = make_context()
    assert context.system_properties == {
        "model_dir": "/models/m", "gpu_id": None, "batch_size": 2, "server_name": "torchd",
        "server_version": "1.2.3", "limit_max_image_pixels": True}
    assert context.request_ids == {0: "id0", 1: "id1"}
    assert context.get_request_id(1) == "id1"
    assert context.get_request_header(0, "Content-Type") == "a/b"
    assert context.get_request_header(0, "content-type") == "a/b"
    assert context.get_request_header(1, "X-Test") == "v"
    assert context.get_request_header(1, "missing") is None
    assert context.get_all_request_header(1) == {"x-test": "v"}
    assert context.model_yaml_config == {"k": 1}


def test_context_response_settings():
    context = make_context()
    assert context.get_response_status(0) == (200, "")
    context.set_response_status(404, "Nope", 1)
    context.set_response_header(1, "X-H", 5)
    context.set_response_content_type(1, "text/plain")
    assert context.get_response_status(1) == (404, "Nope")
    assert context.get_response_headers(1) == {"X-H": "5"}
    processor = context.request_processor[1]
    assert (processor.get_response_header("X-H"), processor.get_response_header("no")) == \
        ("5", None)
    assert context.get_response_content_type(1) == "text/plain"
    assert context.get_response_status(0) == (200, "")
    context.set_all_response_status(202, "Accepted")
    assert context.get_response_status(0) == context.get_response_status(1) == (202, "Accepted")
    context.begin_batch(["n"], [{}])
    assert context.get_response_status(0) == (200, "")


def test_metrics_record_values():
    context = make_context()
    metrics = context.metrics
    metrics.add_time("T", 12.5, idx=1)
    metrics.add_time("T", 3, unit="s")
    metrics.add_counter("C", 2, dimensions=[Dimension("d", "v")])
    metrics.add_size("S", 1.5, unit="GB")
    metrics.add_percent("P", 50.0)
    metrics.add_metric("M", 7, "items", metric_type=MetricTypes.HISTOGRAM)
    assert metrics.values("T") == [12.5, 3]
    records = {r.name: r for r in metrics.records}
    assert records["T"].request_id is None and metrics.records[0].request_id == "id1"
    assert (records["C"].unit, records["C"].metric_type) == ("Count", MetricTypes.COUNTER)
    assert [str(d) for d in records["C"].dimensions] == ["d:v"]
    assert records["S"].unit == "Gigabytes"
    assert records["P"].unit == "Percent"
    assert records["M"].metric_type == MetricTypes.HISTOGRAM
    with pytest.raises(ValueError):
        metrics.add_time("bad", 1, unit="hours")
    metric = metrics.add_metric_to_cache("Cached", "ms", ["ModelName"], "gauge")
    assert metrics.get_metric("Cached", MetricTypes.GAUGE) is metric
    metric.add_or_update(4, ["m"], "req")
    assert metrics.values("Cached") == [4]
    with pytest.raises(ValueError):
        metric.add_or_update(4, [])


def test_declared_metrics_are_in_the_cache_and_loading_records_are_the_models():
    """TorchServe fills a worker's cache from the configuration's model_metrics; what a handler
    records while it loads gets the model's default dimensions, not the Error level."""
    metrics = MetricsRecorder("m")
    metrics.declare([{"name": "RequestBatchSize", "type": "gauge", "unit": "count",
                      "dimensions": ["ModelName"]}])
    declared = metrics.get_metric("RequestBatchSize", MetricTypes.GAUGE)
    assert (declared.unit, declared.dimension_names) == ("count", ["ModelName"])
    with pytest.raises(KeyError):
        metrics.get_metric("RequestBatchSize", MetricTypes.COUNTER)
    metrics.loading = True
    metrics.add_counter("InitializeCallCount", 1)
    metrics.loading = False
    metrics.add_counter("Outside", 1)
    dims = {m["name"]: m["dimensions"] for m in metrics.take_pending()}
    assert dims == {"InitializeCallCount": [["ModelName", "m"], ["Level", "Model"]],
                    "Outside": [["ModelName", "m"], ["Level", "Error"]]}


def test_send_intermediate_needs_a_handled_request():
    with pytest.raises(RuntimeError):
        send_intermediate_predict_response(["x"], {0: "id"}, "msg", 200, make_context())
    seen = []
    context = make_context()
    context.stream_writer = lambda *args: seen.append(args)
    send_intermediate_predict_response(["x", "y"], context.request_ids, "msg", 200, context)
    assert seen == [(["x", "y"], {0: "id0", 1: "id1"}, "msg", 200)]


def test_map_class_to_label():
    assert map_class_to_label([[0.1, 0.9]], {"0": "cat", "1": "dog"}) == [
        {"cat": 0.1, "dog": 0.9}]
    assert map_class_to_label([[0.9]], None, [[3]]) == [{"3": 0.9}]


ALIAS_PROBE = """
import sys
from worker.ts_alias import install_ts_alias
install_ts_alias()
install_ts_alias()
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException
from ts.context import Context
from ts.handler_utils.utils import send_intermediate_predict_response
from ts.protocol.otf_message_handler import send_intermediate_predict_response as older_path
import ts.torch_handler.base_handler as aliased
import worker.ts.torch_handler.base_handler as real
import worker.ts.utils.util, worker.ts.context, worker.runtime.context, worker.runtime.streaming
try:
    import ts.torch_handler.no_such_handler
    missing = None
except ModuleNotFoundError as exc:
    missing = str(exc)
print(json.dumps({
    "same_module": aliased is real,
    "same_classes": [BaseHandler is real.BaseHandler,
                     PredictionException is worker.ts.utils.util.PredictionException,
                     Context is worker.ts.context.Context,
                     Context is worker.runtime.context.Context,
                     send_intermediate_predict_response
                     is worker.runtime.streaming.send_intermediate_predict_response,
                     older_path is send_intermediate_predict_response],
    "spec": real.__spec__.name,
    "finders_last": type(sys.meta_path[-1]).__name__,
    "finders": sum(type(f).__name__ == "TsAliasFinder" for f in sys.meta_path),
    "missing": missing,
}))
"""


def test_ts_alias_in_a_fresh_interpreter(tmp_path):
    out = subprocess.run([sys.executable, "-c", "import json\n" + ALIAS_PROBE],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe == {
        "same_module": True, "same_classes": [True] * 6,
        "spec": "worker.ts.torch_handler.base_handler", "finders_last": "TsAliasFinder",
        "finders": 1, "missing": "No module named 'ts.torch_handler.no_such_handler'"}


def test_a_real_ts_package_wins(tmp_path):
    fake = tmp_path / "ts"
    (fake / "utils").mkdir(parents=True)
    (fake / "__init__.py").write_text("REAL = True\n")
    (fake / "utils" / "__init__.py").write_text("")
    (fake / "utils" / "util.py").write_text("class PredictionException(Exception):\n    pass\n")
    probe = ("from worker.ts_alias import install_ts_alias; install_ts_alias()\n"
             "import ts, ts.utils.util\n"
             "print(ts.REAL, ts.utils.util.__file__)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, check=True)
    assert out.stdout.split() == ["True", str(fake / "utils" / "util.py")]


def test_the_alias_is_not_installed_by_importing_worker():
    probe = ("import sys, worker, worker.service, worker.codec\n"
             "print(any(type(f).__name__ == 'TsAliasFinder' for f in sys.meta_path))\n"
             "try:\n    import ts\n    print('ts importable')\n"
             "except ModuleNotFoundError:\n    print('no ts')\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.split("\n")[:2] == ["False", "no ts"]


def test_deeply_nested_json_is_refused_by_the_codec_not_the_handler():
    nested = b"[" * 100_000 + b"]" * 100_000
    requests = [{"id": "a", "parameters": [{"name": "body", "content_type": "application/json",
                                            "value": b'{"x": 1}'}]},
                {"id": "b", "parameters": [{"name": "body", "content_type": "application/json",
                                            "value": nested}]},
                {"id": "c", "parameters": [{"name": "body", "content_type": "application/json",
                                            "value": b"not json"}]}]
    kept, data, refused = codec.decode_batch(requests)
    assert [r["id"] for r in kept] == ["a", "c"]
    assert data == [{"body": {"x": 1}}, {"body": bytearray(b"not json")}]   # TorchServe's bytes
    (answer,) = refused
    assert (answer["id"], answer["status"], answer["error"]) == ("b", 400, True)
    assert answer["error_type"] == "BadRequestException"
    assert "nested too deeply" in answer["reason"]


def test_import_class_names_a_class_by_its_dotted_path():
    assert import_class("collections.OrderedDict") is OrderedDict
    assert import_class("OrderedDict", module_prefix="collections") is OrderedDict
    assert import_class("abc.Mapping", module_prefix="collections") is collections.abc.Mapping
    for name, prefix, message in (("", None, "class name is not defined"),
                                  ("OrderedDict", None, "module name is not defined"),
                                  ("collections.NoSuch", None, "class:NoSuch not found")):
        with pytest.raises(ImportError, match=message):
            import_class(name, module_prefix=prefix)


def test_text_cleanup_and_yaml_helpers(tmp_path):
    assert CLEANUP_REGEX.sub("", "<b>fish</b> &amp; chips&#39;s &#x27;") == "fish  chipss "
    (tmp_path / "c.yaml").write_text("batchSize: 4\nhandler: {k: v}\n")
    assert get_yaml_config(str(tmp_path / "c.yaml")) == {"batchSize": 4, "handler": {"k": "v"}}
    (tmp_path / "empty.yaml").write_text("")
    assert get_yaml_config(str(tmp_path / "empty.yaml")) == {}
