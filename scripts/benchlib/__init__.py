"""The parts of scripts/bench, the torchd vs TorchServe benchmark (issue 7).

    environment  TorchServe's venv, the tools the bench needs, the model archives
    servers      the servers under test (torchd, TorchServe), their processes, HTTP calls
    load         wrk runs and the CPU meter that says how busy other processes kept the machine
    rounds       one measured round against one server
    continuous   the continuous-batching round (continuous vs static batching, streamed answers)
    streams      its load: closed-loop clients that time each streamed answer's first part
    llm          the LLM round (a tiny causal LM, 1/8/32 token streams, with and without
                 continuous batching; TorchServe's own continuous-batching handler)
    token_streams  its load: closed-loop clients that time every token of SSE or chunked answers
    token_answers  how they read a streamed answer as it arrives (pure: an incremental parser)
    report       the metrics, their goals, the medians, the table and the machine description

scripts/bench puts scripts/ on sys.path, for this package and for bench_models beside it.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
REPO_VENV = REPO / ".venv"


class BenchError(RuntimeError):
    """A precondition or a server call failed; the message says what to do."""


def tail(path: Path, lines: int = 25) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""
