"""BaseHandler subclass on a TorchScript model; answers with each row's argmax as well."""
from ts.torch_handler.base_handler import BaseHandler


def _labelled(row):
    return {"logits": row, "argmax": max(range(len(row)), key=row.__getitem__)}


class MlpScriptHandler(BaseHandler):
    def postprocess(self, data):
        answers = super().postprocess(data)
        return [[_labelled(row) for row in answer] if isinstance(answer[0], list)
                else _labelled(answer) for answer in answers]
