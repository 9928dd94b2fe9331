"""BaseHandler subclass using the default steps on an eager model (model.py + state_dict)."""
from ts.torch_handler.base_handler import BaseHandler


class MlpEagerHandler(BaseHandler):
    pass
