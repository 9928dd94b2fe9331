"""The committed gRPC modules and their type stubs are what the .proto files generate today
(issues 16, 23): regenerated into a temporary directory with the command that made them, they
match byte for byte."""
from __future__ import annotations

from pathlib import Path

from daemon.rpc.codegen import GENERATED_DIR, generate


def test_generated_modules_are_current(tmp_path: Path) -> None:
    written = generate(tmp_path)
    assert {p.name for p in written} >= {"inference_pb2.py", "inference_pb2_grpc.py",
                                         "management_pb2.py", "management_pb2_grpc.py",
                                         "grpc_predict_v2_pb2.py", "rpc_status_pb2.py",
                                         "inference_pb2.pyi", "management_pb2.pyi",
                                         "grpc_predict_v2_pb2.pyi", "rpc_status_pb2.pyi"}
    fresh = {p.name: p.read_bytes() for p in tmp_path.glob("*.py*")}
    committed = {p.name: p.read_bytes() for p in GENERATED_DIR.glob("*.py*")}
    stale = sorted(name for name in fresh.keys() | committed.keys()
                   if fresh.get(name) != committed.get(name))
    assert stale == [], f"run `python -m daemon.rpc.codegen` (stale: {stale})"
