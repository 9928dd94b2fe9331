"""gRPC no-op throughput (issue 16): a bounded closed loop of grpc.aio callers.

``callers`` coroutines on one channel each send TorchServe's Predictions for the no-op model,
wait for the answer and send again, for ``seconds``; the rate is the answers per second. The
request is built once and the answers are not parsed, so the client's own cost per call stays
small; still, it is Python on the same machine as the server, and a bound on the rate it can
show: compare it with REST's wrk figure as "the same daemon over another protocol", not as a
protocol's ceiling.
"""
from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import grpc

from . import REPO

if str(REPO) not in sys.path:   # the request message from this checkout's generated modules
    sys.path.insert(0, str(REPO))
from daemon.rpc.generated import inference_pb2  # noqa: E402

PREDICTIONS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"


def request_bytes(model: str) -> bytes:
    """A PredictionsRequest for ``model`` with one input, "data" = b"{}", serialized."""
    return inference_pb2.PredictionsRequest(model_name=model,
                                            input={"data": b"{}"}).SerializeToString()


def measure(port: int, model: str, callers: int, seconds: float) -> dict[str, Any]:
    """Answers per second and the failures, over ``seconds`` of ``callers`` closed loops."""
    return asyncio.run(_closed_loop(f"127.0.0.1:{port}", request_bytes(model), callers,
                                    seconds))


async def _closed_loop(target: str, payload: bytes, callers: int,
                       seconds: float) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(PREDICTIONS)
        await call(payload, timeout=30)   # connected and answering before the clock starts
        deadline = time.monotonic() + seconds
        started = time.monotonic()
        counts = await asyncio.gather(*(_caller(call, payload, deadline)
                                        for _ in range(callers)))
        elapsed = time.monotonic() - started
    answered = sum(ok for ok, _ in counts)
    failed = sum(bad for _, bad in counts)
    return {"rps": answered / elapsed, "requests": answered + failed, "failed": failed,
            "callers": callers, "duration_s": elapsed}


async def _caller(call: Any, payload: bytes, deadline: float) -> tuple[int, int]:
    answered = failed = 0
    while time.monotonic() < deadline:
        try:
            await call(payload, timeout=30)
            answered += 1
        except grpc.aio.AioRpcError:
            failed += 1
    return answered, failed
