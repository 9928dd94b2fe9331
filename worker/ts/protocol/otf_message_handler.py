"""``ts.protocol.otf_message_handler``: only what handlers import from it. TorchServe 0.12's
docs still name this path for ``send_intermediate_predict_response`` (deprecated for 1.0 in
favour of ``ts.handler_utils.utils``); it is the same function here."""
from worker.runtime.streaming import send_intermediate_predict_response

__all__ = ["send_intermediate_predict_response"]
