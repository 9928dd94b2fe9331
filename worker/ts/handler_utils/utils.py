"""``ts.handler_utils.utils``: streaming a part per request before the end
(worker/runtime/streaming.py)."""
from worker.runtime.streaming import send_intermediate_predict_response

__all__ = ["send_intermediate_predict_response"]
