"""Reading frames from a blocking socket in tests, the way the worker and the zygote read them:
whatever recv() returns goes through protocol.frames.FrameDecoder."""
from __future__ import annotations

import collections
import socket
from typing import Any

from protocol.frames import DEFAULT_MAX_FRAME, FrameDecoder

RECV_BYTES = 64 * 1024


class FrameReader:
    """Whole messages from one socket, one at a time.

    One recv() may bring several frames (or part of one): the ones not asked for yet wait here,
    so keep one reader per socket for its whole life.
    """

    def __init__(self, sock: socket.socket, max_size: int = DEFAULT_MAX_FRAME) -> None:
        self.sock = sock
        self._decoder = FrameDecoder(max_size)
        self._decoded: collections.deque[dict[str, Any]] = collections.deque()

    def next(self) -> dict[str, Any] | None:
        """The next message; None on a clean EOF. Raises ProtocolError on a bad or truncated
        frame, and the socket's timeout error when nothing whole arrives in time."""
        while not self._decoded:
            data = self.sock.recv(RECV_BYTES)
            if not data:
                self._decoder.close()  # a frame cut short by EOF raises here
                return None
            self._decoded.extend(self._decoder.feed(data))
        return self._decoded.popleft()
