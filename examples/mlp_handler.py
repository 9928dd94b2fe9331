"""Handler for the example model: a TorchScript MLP, 4 features in, 3 class probabilities out.

Request body: {"data": [[f1, f2, f3, f4], ...]}, a list of rows, or one row [f1, f2, f3, f4].
Answer: one [p0, p1, p2] per row (a single list for a single row).
"""
from ts.torch_handler.base_handler import BaseHandler


class MLPHandler(BaseHandler):
    """BaseHandler's steps (JSON rows -> tensor -> TorchScript model) plus a softmax."""

    def postprocess(self, data):
        return super().postprocess(data.softmax(dim=-1))
