"""Handler for the example model: a TorchScript MLP, 4 features in, 3 class probabilities out.

Request bodies (JSON), one or many rows of 4 numbers each:
- TorchServe's ``{"data": [[f1, f2, f3, f4], ...]}``, or a bare row ``[f1, f2, f3, f4]``;
- KServe v1's ``{"instances": [[...], ...]}``;
- Open Inference Protocol v2's ``{"inputs": [{"name": ..., "shape": [n, 4], "datatype": "FP32",
  "data": [...]}]}`` (flat or nested data), answered as an OIP v2 response document.
Answer: one [p0, p1, p2] per row (a single list for a single row).
"""
import torch
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

OUTPUT_NAME = "probabilities"


def _oip_inputs(row):
    """An OIP v2 request's first input tensor, or None when the body is not OIP v2."""
    body = row.get("data") or row.get("body") if isinstance(row, dict) else None
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        return None
    inputs = body["inputs"]
    if not inputs or not isinstance(inputs[0], dict) or "data" not in inputs[0]:
        raise PredictionException("an OIP v2 request needs one input with data", 400)
    first = inputs[0]
    try:
        tensor = torch.as_tensor(first["data"], dtype=torch.float32)
        return tensor.reshape(first.get("shape") or [-1, 4])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise PredictionException(f"input {first.get('name')!r} is not numbers of its "
                                  f"shape: {exc}", 400) from exc


class MLPHandler(BaseHandler):
    """BaseHandler's steps (JSON rows -> tensor -> TorchScript model) plus a softmax."""

    def preprocess(self, data):
        self._oip = [_oip_inputs(row) is not None for row in data]
        if not any(self._oip):
            return super().preprocess(data)
        # OIP rows stand in for the request's body: BaseHandler splits the output back per request
        rows = [{"data": _oip_inputs(row).tolist()} if oip else row
                for row, oip in zip(data, self._oip)]
        return super().preprocess(rows)

    def postprocess(self, data):
        answers = super().postprocess(data.softmax(dim=-1))
        return [self._oip_answer(answer) if oip else answer
                for answer, oip in zip(answers, self._oip)]

    def _oip_answer(self, answer):
        rows = answer if answer and isinstance(answer[0], list) else [answer]
        return {"model_name": self.context.model_name, "outputs": [
            {"name": OUTPUT_NAME, "shape": [len(rows), len(rows[0])], "datatype": "FP32",
             "data": [value for row in rows for value in row]}]}
