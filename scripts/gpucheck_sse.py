"""gpu-check --llm's clients: OpenAI completions through TorchServe's launcher paths
(``/predictions/{model}/1.0/v1/completions``), whole or as server-sent events, and a closed loop
of streaming clients over a time window (stdlib asyncio: chunked answers, time to first chunk)."""
from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PROMPTS = ["the quick brown fox", "hello", "a server answers requests from its clients",
           "tiny model", "continuous batching lets new sequences join", "every", "stream gets",
           "the daemon pays for each step"]


def path_of(model: str) -> str:
    return f"/predictions/{model}/1.0/v1/completions"


def body_of(model: str, prompt: str, stream: bool, max_tokens: int) -> dict[str, Any]:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def call(url: str, method: str = "GET", body: dict | None = None,
         timeout: float = 120) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def as_json(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return {"raw": raw[:300].decode(errors="replace")}


@dataclass
class Completion:
    status: int
    text: str = ""
    tokens: int | None = None        # usage.completion_tokens
    finish: str | None = None
    error: str = ""


def events(raw: bytes) -> list[dict]:
    """The events of a streamed answer (which must end with ``data: [DONE]``)."""
    lines = [line for line in raw.split(b"\n") if line.strip()]
    if not lines or lines[-1].strip() != b"data: [DONE]":
        raise ValueError(f"no [DONE] at the end: {raw[-120:]!r}")
    return [json.loads(line[len(b"data: "):]) for line in lines[:-1]]


def complete(port: int, model: str, prompt: str, stream: bool, max_tokens: int = 32,
             timeout: float = 120) -> Completion:
    status, raw = call(f"http://127.0.0.1:{port}{path_of(model)}", "POST",
                       body_of(model, prompt, stream, max_tokens), timeout)
    if status != 200:
        return Completion(status, error=raw[:300].decode(errors="replace"))
    try:
        if not stream:
            answer = json.loads(raw)
            choice = answer["choices"][0]
            return Completion(status, choice["text"], answer["usage"]["completion_tokens"],
                              choice["finish_reason"])
        chunks = events(raw)
        text = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")]
        usage = chunks[-1].get("usage") or {}
        return Completion(status, text, usage.get("completion_tokens"), finish[-1])
    except (ValueError, KeyError, IndexError) as exc:
        return Completion(status, error=f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------- streams over a window

@dataclass
class Stream:
    started: float
    first: float | None = None      # perf_counter() at the first chunk of the answer
    done: float | None = None       # ... at its end
    error: str = ""


async def _answer(reader: asyncio.StreamReader, stream: Stream) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" not in head.lower():
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n")[0])
        raise ValueError(f"HTTP {status}: {(await reader.readexactly(length))[:200]!r}")
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            break
        chunk = await reader.readexactly(size + 2)
        if stream.first is None:
            stream.first = time.perf_counter()
        if status != 200:
            raise ValueError(f"HTTP {status}: {chunk[:200]!r}")
    stream.done = time.perf_counter()


async def _client(port: int, model: str, prompts: list[str], max_tokens: int,
                  streams: list[Stream]) -> None:
    """Requests back to back on one keep-alive connection until cancelled."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for turn in range(1_000_000):
            body = json.dumps(body_of(model, prompts[turn % len(prompts)], True,
                                      max_tokens)).encode()
            stream = Stream(time.perf_counter())
            streams.append(stream)
            writer.write(f"POST {path_of(model)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}"
                         "\r\n\r\n".encode() + body)
            try:
                await _answer(reader, stream)
            except (ValueError, IndexError, asyncio.IncompleteReadError) as exc:
                stream.error = f"{type(exc).__name__}: {exc}"
                writer.close()
                await asyncio.sleep(0.1)
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()   # a request still streaming: the client hangs up


async def _window(port: int, model: str, clients: int, seconds: float, max_tokens: int,
                  at_end: Callable[[], Any]) -> tuple[list[Stream], Any, float]:
    streams: list[Stream] = []
    rotations = [[PROMPTS[(i + j) % len(PROMPTS)] for j in range(len(PROMPTS))]
                 for i in range(clients)]   # each client starts at another prompt
    tasks = [asyncio.create_task(_client(port, model, prompts, max_tokens, streams))
             for prompts in rotations]
    await asyncio.sleep(seconds)
    end = time.perf_counter()
    snapshot = at_end()     # before the hang-ups: the server's counters at the window's end
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    broken = [r for r in results if isinstance(r, Exception)
              and not isinstance(r, asyncio.CancelledError)]
    if broken:
        raise RuntimeError(f"a streaming client broke: {broken[0]!r}")
    return streams, snapshot, end


def stream_window(port: int, model: str, clients: int, seconds: float, max_tokens: int,
                  at_end: Callable[[], Any] = lambda: None) -> tuple[list[Stream], Any, float]:
    """``clients`` closed loops of streamed completions for ``seconds``, then every client
    hangs up; ``at_end()`` is called at the end of the window, before that. Returns every
    request's times, what ``at_end`` returned and the window's end (perf_counter)."""
    return asyncio.run(_window(port, model, clients, seconds, max_tokens, at_end))
