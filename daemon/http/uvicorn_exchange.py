"""The direct path's view of one request on the inference listener: an ``Exchange`` over
uvicorn's request cycle (daemon/http/direct.py writes through it).

Part of the uvicorn adapter (daemon/http/uvicorn_adapter.py, whose ``UVICORN_PRIVATE`` lists
every uvicorn name used here too); kept apart so that each module stays one concept: this one
the request and its response, that one the connection and its limits.
"""
from __future__ import annotations

from typing import Any, Protocol


class DirectListener(Protocol):
    """What an exchange tells the request it carries (daemon/http/direct.py)."""

    def on_request_event(self) -> None:
        """More of the body came, the body is complete, or the client hung up."""

    def on_writing_paused(self) -> None: ...

    def on_writing_resumed(self) -> None: ...


class Exchange:
    """One request and its response on a connection, as the direct path sees it.

    It stands in for the request cycle's ``message_event``: uvicorn ``set``s that for each part
    of the body, at the body's end and when the client hangs up."""

    __slots__ = ("protocol", "cycle", "listener")

    def __init__(self, protocol: Any, cycle: Any) -> None:
        self.protocol = protocol
        self.cycle = cycle
        self.listener: DirectListener | None = None

    # ---- the request ------------------------------------------------------------------------

    @property
    def scope(self) -> dict[str, Any]:
        return self.cycle.scope

    @property
    def expects_continue(self) -> bool:
        return bool(self.cycle.waiting_for_100_continue)

    @property
    def body(self) -> bytearray:
        return self.cycle.body

    @property
    def more_body(self) -> bool:
        return bool(self.cycle.more_body)

    @property
    def disconnected(self) -> bool:
        return bool(self.cycle.disconnected)

    def listen(self, listener: DirectListener) -> None:
        self.listener = listener
        self.cycle.message_event = self
        self.protocol.exchange = self

    def resume_reading(self) -> None:
        """uvicorn pauses reading past 64 KiB of body; the direct path holds more."""
        self.protocol.flow.resume_reading()

    def set(self) -> None:    # the cycle's message_event
        if self.listener is not None:
            self.listener.on_request_event()

    def clear(self) -> None:
        """uvicorn clears the event only in ``receive``, which nothing calls here."""

    # ---- the response -----------------------------------------------------------------------

    @property
    def keep_alive(self) -> bool:
        return bool(self.cycle.keep_alive)

    @keep_alive.setter
    def keep_alive(self, value: bool) -> None:
        self.cycle.keep_alive = value

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        return self.protocol.server_state.default_headers

    @property
    def writing_paused(self) -> bool:
        return bool(self.protocol.flow.write_paused)

    @property
    def buffered(self) -> int:
        """Bytes written and not yet taken by the client's socket."""
        return int(self.protocol.transport.get_write_buffer_size())

    def call_soon(self, callback: Any, *args: Any) -> None:
        self.protocol.loop.call_soon(callback, *args)

    def write(self, data: bytes) -> None:
        self.cycle.response_started = True
        self.protocol.transport.write(data)

    def complete(self) -> None:
        """The response is out: the connection goes on to its next request, or closes."""
        cycle = self.cycle
        self.release()
        if cycle.disconnected:
            return
        cycle.response_complete = True
        if not cycle.keep_alive:
            self.protocol.transport.close()
        cycle.on_response()

    def close(self) -> None:
        """End the connection now (a response cut short)."""
        self.release()
        self.protocol.transport.close()

    def release(self) -> None:
        """Done: the cycle and the protocol point here, and here to the request; left alone,
        every request would be a reference cycle for the cyclic collector."""
        self.listener = None
        self.cycle.message_event = SPENT
        if self.protocol.exchange is self:
            self.protocol.exchange = None


class _SpentEvent:
    """A finished request's message event: what uvicorn still tells it (a hang-up after the
    response, say) concerns nobody."""

    __slots__ = ()

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass


SPENT = _SpentEvent()
