"""Thin adapters that move frames over asyncio streams (the daemon) and blocking sockets.

Blocking readers (the worker's Channel, the zygote) feed what recv() returns to
protocol.frames.FrameDecoder, so only the blocking write lives here.
"""
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


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    """Blocking write of one message."""
    sock.sendall(encode_frame(message))
