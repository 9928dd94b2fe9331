"""BaseHandler subclass on a TorchScript model; answers with the row's argmax as well."""
from ts.torch_handler.base_handler import BaseHandler


class MlpScriptHandler(BaseHandler):
    def postprocess(self, data):
        rows = super().postprocess(data)
        return [{"logits": row, "argmax": max(range(len(row)), key=row.__getitem__)}
                for row in rows]
