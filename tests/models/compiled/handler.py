"""BaseHandler's own steps on whatever the archive holds, plus what the tests read through
describe (GET /models/m?customized=true): the model's type and format, the torch.compile
backend, how many graphs dynamo has compiled in this worker, where inductor caches and how
often its FX graph cache hit and missed."""
import os
import sys

from ts.torch_handler.base_handler import BaseHandler


class CompiledHandler(BaseHandler):
    def describe_handle(self):
        return {"model_type": type(self.model).__name__, "format": self.model_format.value,
                "compiled_backend": self.compiled_backend, "graphs": compiled_graphs(),
                "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
                "fx_cache": fx_graph_cache()}


def compiled_graphs():
    # Read only if dynamo is loaded: importing it takes seconds, which a model that is not
    # compiled never pays.
    dynamo_utils = sys.modules.get("torch._dynamo.utils")
    return dynamo_utils.counters["stats"]["unique_graphs"] if dynamo_utils else 0


def fx_graph_cache():
    dynamo_utils = sys.modules.get("torch._dynamo.utils")
    if dynamo_utils is None:
        return {"hit": 0, "miss": 0}
    inductor = dynamo_utils.counters["inductor"]
    return {"hit": inductor["fxgraph_cache_hit"], "miss": inductor["fxgraph_cache_miss"]}
