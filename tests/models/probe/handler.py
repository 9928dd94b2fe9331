"""A BaseHandler without a model: answers which model, version and route served it (the
``explain`` header), and records the metrics the request asks for:

body ``{"color": "red"}``: one ``ProbeRequests`` counter with dimension ``Color``;
body ``{"series": N}``: N ``ProbeSeries`` counters, each with its own ``Index`` (a flood);
body ``{"batch": N}``: ``RequestBatchSize`` (which a metrics_config must declare) set to N with
``get_metric``; body ``{"handler_time": N}``: the declared ``HandlerTime`` set so.
Its ``initialize`` counts ``InitializeCallCount``.
BaseHandler.handle adds TorchServe's ``HandlerTime``.
"""
import json

from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler


def _payload(row):
    value = row.get("body") if row.get("body") is not None else row.get("data")
    if isinstance(value, (bytes, bytearray)):
        try:
            value = json.loads(value)
        except ValueError:
            value = {}
    return value if isinstance(value, dict) else {}


class ProbeHandler(BaseHandler):
    def initialize(self, context):
        self.context = context
        self.initialized = True
        # as TorchServe's custom metrics example: recorded while loading, shown once loaded
        context.metrics.add_counter("InitializeCallCount", 1)

    def preprocess(self, data):
        return [_payload(row) for row in data]

    def inference(self, data, *args, **kwargs):
        return data

    def postprocess(self, data):
        return [self._answer(idx, payload) for idx, payload in enumerate(data)]

    def explain_handle(self, data_preprocess, raw_data):
        return self.postprocess(data_preprocess)

    def _answer(self, idx, payload):
        metrics = self.context.metrics
        metrics.add_counter("ProbeRequests", 1, idx,
                            [Dimension("Color", str(payload.get("color", "none")))])
        for index in range(int(payload.get("series", 0))):
            metrics.add_counter("ProbeSeries", 1, idx, [Dimension("Index", str(index))])
        if "batch" in payload:   # declared by a metrics_config, as TorchServe's example does
            metrics.get_metric("RequestBatchSize", MetricTypes.GAUGE).add_or_update(
                payload["batch"], [self.context.model_name])
        if "handler_time" in payload:   # declared by TorchServe's default configuration
            metrics.get_metric("HandlerTime", MetricTypes.GAUGE).add_or_update(
                payload["handler_time"], [self.context.model_name, "Model"])
        return {"model": self.context.model_name,
                "version": self.context.manifest["model"]["modelVersion"],
                "explain": self.context.get_request_header(idx, "explain")}
