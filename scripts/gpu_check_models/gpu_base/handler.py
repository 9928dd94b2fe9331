"""A TorchServe BaseHandler model (TorchScript): reports where BaseHandler put it."""
from ts.torch_handler.base_handler import BaseHandler


class Where(BaseHandler):
    def postprocess(self, data):
        device = str(next(self.model.parameters()).device)
        gpu_id = self.context.system_properties.get("gpu_id")
        return [{"device": device, "gpu_id": gpu_id} for _ in range(len(data))]
