"""sd_notify: READY/STOPPING/STATUS/WATCHDOG/EXTEND_TIMEOUT_USEC datagrams to $NOTIFY_SOCKET
(read by config)."""
from __future__ import annotations

import logging
import socket

logger = logging.getLogger(__name__)


class Notifier:
    def __init__(self, notify_socket: str | None) -> None:
        self.address = notify_socket
        if notify_socket and notify_socket.startswith("@"):
            self.address = "\0" + notify_socket[1:]   # abstract namespace socket

    def send(self, *lines: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            logger.warning("sd_notify to %s failed: %s", self.address, exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=draining")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        """A long start step: systemd's start timeout becomes at least ``seconds`` from now."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")
