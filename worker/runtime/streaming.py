"""Streaming: a handler's parts, sent to their clients before its batch ends.

One way out, two ways in. The worker sets ``context.stream_writer`` for the batch it runs
(worker/service.py); the parts leave through it. torchd's own
``ts.handler_utils.utils.send_intermediate_predict_response`` (the function below) hands it the
values. TorchServe's own, which a handler calls when the real ``ts`` package is installed (it
wins the import over the ``ts`` alias), encodes TorchServe's binary predict response and writes
it to ``context.cl_socket``: ``PartsSocket`` reads that message back into its parts and hands
them to the same writer.
"""
from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# Called with (ret, req_id_map, message, code): ret[idx] is the part of request req_id_map[idx].
StreamWriter = Callable[[Any, dict[int, str], str, int], None]
# TorchServe's backend tells its frontend "more parts follow" with this response header; torchd's
# frames say it themselves, so the header never reaches a client.
STREAM_NEXT = "ts_stream_next"
_INT = struct.Struct("!i")
_END = -1


def send_intermediate_predict_response(ret: Sequence[Any] | Mapping[int, Any],
                                       req_id_map: dict[int, str], message: str, code: int,
                                       context: Any = None) -> None:
    """Send ``ret[idx]`` to the client of each request in ``req_id_map`` as a streamed part.

    The final value the handler returns is the last part of each response.
    """
    writer = getattr(context, "stream_writer", None)
    if writer is None:
        raise RuntimeError("send_intermediate_predict_response needs the context of a request "
                           "that is being handled")
    writer(ret, req_id_map, message, code)


class PartsSocket:
    """``context.cl_socket``: what TorchServe's own send_intermediate_predict_response writes
    its parts to (``cl_socket.sendall(message)``), its wire format read back into the parts."""

    def __init__(self, context: Any) -> None:
        self.context = context

    def sendall(self, data: bytes | bytearray) -> None:
        code, message, bodies = decode_predict_response(bytes(data))
        index = {request_id: idx for idx, request_id in (self.context.request_ids or {}).items()}
        unknown = [request_id for request_id in bodies if request_id not in index]
        if unknown:
            raise ValueError(f"parts for requests not in this batch: {unknown}")
        id_map = {index[request_id]: request_id for request_id in bodies}
        for idx in id_map:
            self.context.remove_response_header(idx, STREAM_NEXT)
        ret = {index[request_id]: body for request_id, body in bodies.items()}
        send_intermediate_predict_response(ret, id_map, message, code, self.context)


def decode_predict_response(data: bytes) -> tuple[int, str, dict[str, bytes]]:
    """TorchServe's predict response (ts/protocol/otf_message_handler.py,
    create_predict_response) -> (code, message, {request id: body}).

    Per request it carries the id, content type, status, phrase and headers, then the body; all
    but the id and body are the context's own values, which the writer reads from the context.
    """
    reader = _Reader(data)
    code = reader.number()
    message = reader.text()
    bodies: dict[str, bytes] = {}
    while (size := reader.number()) != _END:
        request_id = reader.take(size).decode("utf-8")
        reader.text()                              # content type
        reader.number()                               # status
        reader.text()                              # reason phrase
        for _ in range(2 * reader.number()):          # headers: name, value
            reader.text()
        bodies[request_id] = reader.take(reader.number())
    if not reader.done():
        raise ValueError("predict response: bytes after its end")
    return code, message, bodies


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.at + size > len(self.data):
            raise ValueError("predict response: truncated or malformed")
        chunk = self.data[self.at:self.at + size]
        self.at += size
        return chunk

    def number(self) -> int:
        return _INT.unpack(self.take(_INT.size))[0]

    def text(self) -> str:
        return self.take(self.number()).decode("utf-8")

    def done(self) -> bool:
        return self.at == len(self.data)
