"""Thin adapters that move frames over asyncio streams and blocking sockets."""
from __future__ import annotations

import asyncio
import socket
from typing import Any

from protocol.frames import DEFAULT_MAX_FRAME, HEADER, ProtocolError, decode_payload, \
    encode_frame, frame_length


async def read_frame(reader: asyncio.StreamReader,
                     max_size: int = DEFAULT_MAX_FRAME) -> dict[str, Any] | None:
    """Next message, or None on a clean EOF between frames."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("stream ended inside a frame header (truncated frame)") from exc
        return None
    length = frame_length(header, max_size)
    try:
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("stream ended inside a frame payload (truncated frame)") from exc
    return decode_payload(payload)


def write_frame(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    """Queue one message on the writer (callers drain when they need backpressure)."""
    writer.write(encode_frame(message))


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            break
        chunks += chunk
    return bytes(chunks)


def recv_frame(sock: socket.socket, max_size: int = DEFAULT_MAX_FRAME) -> dict[str, Any] | None:
    """Blocking read of the next message; None on a clean EOF between frames."""
    header = _recv_exactly(sock, HEADER.size)
    if not header:
        return None
    if len(header) < HEADER.size:
        raise ProtocolError("stream ended inside a frame header (truncated frame)")
    length = frame_length(header, max_size)
    payload = _recv_exactly(sock, length)
    if len(payload) < length:
        raise ProtocolError("stream ended inside a frame payload (truncated frame)")
    return decode_payload(payload)


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    """Blocking write of one message."""
    sock.sendall(encode_frame(message))
