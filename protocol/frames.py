"""Length-prefixed msgpack frames: pure encode, decode and an incremental decoder."""
from __future__ import annotations

import struct
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
VERSION_KEY = "v"
DEFAULT_MAX_FRAME = 6553500
HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame of this protocol."""


# What a request adds to its body in a PREDICT frame: its head (at most 64 KiB on the wire),
# form field names and types, msgpack's framing. Generous: the limit guards against a corrupt
# length, not against the daemon.
REQUEST_OVERHEAD = 256 * 1024


def predict_frame_limit(batch_size: int, max_request_size: int) -> int:
    """The largest PREDICT frame a batch of ``batch_size`` requests can make when no body is
    over ``max_request_size``: what a worker must accept (a frame over its limit ends it)."""
    return max(DEFAULT_MAX_FRAME, batch_size * (max_request_size + REQUEST_OVERHEAD))


def encode_frame(message: dict[str, Any], max_size: int | None = None) -> bytes:
    """Serialise one message (a dict) into a frame, stamping the protocol version."""
    payload = msgpack.packb({**message, VERSION_KEY: PROTOCOL_VERSION}, use_bin_type=True)
    if max_size is not None and len(payload) > max_size:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds the limit of {max_size} bytes")
    return HEADER.pack(len(payload)) + payload


def frame_length(header: bytes, max_size: int) -> int:
    """Read the payload length from a 4-byte header, refusing it before any payload is read."""
    (length,) = HEADER.unpack(header)
    if length > max_size:
        raise ProtocolError(f"frame of {length} bytes exceeds the limit of {max_size} bytes")
    return length


def decode_payload(payload: bytes) -> dict[str, Any]:
    """Turn one frame payload back into a message, checking its shape and version."""
    try:
        message = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(f"undecodable frame payload: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError(f"frame payload is a {type(message).__name__}, expected a map")
    version = message.pop(VERSION_KEY, None)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r} is not {PROTOCOL_VERSION}")
    return message


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get whole messages back."""

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._expected: int | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[dict[str, Any]]:
        self._buffer += data
        messages: list[dict[str, Any]] = []
        while True:
            if self._expected is None:
                if len(self._buffer) < HEADER.size:
                    return messages
                self._expected = frame_length(bytes(self._buffer[: HEADER.size]), self.max_size)
                del self._buffer[: HEADER.size]
            if len(self._buffer) < self._expected:
                return messages
            payload = bytes(self._buffer[: self._expected])
            del self._buffer[: self._expected]
            self._expected = None
            messages.append(decode_payload(payload))

    @property
    def pending(self) -> bool:
        """True while a partial frame is buffered."""
        return bool(self._buffer) or self._expected is not None

    def close(self) -> None:
        """Call at end of stream: a clean EOF passes, a partial frame is a truncation error."""
        if self.pending:
            raise ProtocolError("stream ended inside a frame (truncated frame)")
