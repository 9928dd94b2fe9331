"""gRPC client stubs generated from torchd's .proto files (as a TorchServe client generates
them from TorchServe's), and channels to a test daemon's gRPC ports.

Only the two TorchServe services are generated here: OIP's messages (package ``inference``)
would collide in protobuf's process-wide pool with tritonclient's, which the OIP tests use.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc

PROTO_DIR = Path(__file__).resolve().parents[2] / "daemon" / "rpc" / "proto"
TORCHSERVE_PROTOS = ("rpc_status.proto", "inference.proto", "management.proto")


def generate_stubs(out: Path) -> SimpleNamespace:
    """Run protoc (grpcio-tools) into ``out`` and import what it wrote."""
    import grpc_tools
    from grpc_tools import protoc

    includes = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{includes}", f"--python_out={out}",
            f"--grpc_python_out={out}", *(str(PROTO_DIR / name) for name in TORCHSERVE_PROTOS)]
    assert protoc.main(args) == 0, args
    sys.path.insert(0, str(out))
    try:
        names = ("inference_pb2", "inference_pb2_grpc", "management_pb2", "management_pb2_grpc")
        return SimpleNamespace(**{name: importlib.import_module(name) for name in names})
    finally:
        sys.path.remove(str(out))


def channel(port: int) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{port}")


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def stream_predictions(stubs: SimpleNamespace, grpc_channel: grpc.Channel, model: str,
                       body: bytes, timeout: float) -> Any:
    """A StreamPredictions call to ``model`` with ``body`` as its input: the response
    iterator."""
    infer = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(grpc_channel)
    return infer.StreamPredictions(stubs.inference_pb2.PredictionsRequest(
        model_name=model, input={"body": body}), timeout=timeout)
