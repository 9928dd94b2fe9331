"""Streaming: ``send_intermediate_predict_response`` sends one part per request before the end."""
from __future__ import annotations

from typing import Any


def send_intermediate_predict_response(ret: list[Any], req_id_map: dict[int, str], message: str,
                                       code: int, context: Any = None) -> None:
    """Send ``ret[idx]`` to the client of each request in ``req_id_map`` as a streamed part.

    The final value the handler returns is the last part of each response.
    """
    writer = getattr(context, "stream_writer", None)
    if writer is None:
        raise RuntimeError("send_intermediate_predict_response needs the context of a request "
                           "that is being handled")
    writer(ret, req_id_map, message, code)
