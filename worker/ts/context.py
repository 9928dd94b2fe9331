"""``ts.context``: the Context handed to handlers (worker/runtime/context.py)."""
from worker.runtime.context import Context, RequestProcessor

__all__ = ["Context", "RequestProcessor"]
