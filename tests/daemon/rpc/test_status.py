"""HTTP statuses as gRPC codes: TorchServe's mapping (issue 16) and the fallbacks."""
from __future__ import annotations

import grpc
import pytest

from daemon.rpc.status import grpc_code

C = grpc.StatusCode


@pytest.mark.parametrize(("status", "code"), [
    (400, C.INVALID_ARGUMENT), (401, C.UNAUTHENTICATED), (403, C.PERMISSION_DENIED),
    (404, C.NOT_FOUND), (405, C.PERMISSION_DENIED), (409, C.ABORTED),
    (413, C.RESOURCE_EXHAUSTED), (429, C.RESOURCE_EXHAUSTED), (501, C.UNIMPLEMENTED),
    (503, C.UNAVAILABLE), (504, C.DEADLINE_EXCEEDED), (507, C.RESOURCE_EXHAUSTED),
    (418, C.INVALID_ARGUMENT), (500, C.INTERNAL), (513, C.INTERNAL)])
def test_grpc_code(status: int, code: grpc.StatusCode) -> None:
    assert grpc_code(status) == code
