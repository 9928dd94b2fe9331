"""daemon/errors.py: the shared error builders say exactly what TorchServe says."""
from __future__ import annotations

from daemon.errors import no_worker_error


def test_no_worker_error():
    error = no_worker_error("m")
    assert error.status == 503 and error.headers == {}
    assert error.to_json() == {
        "code": 503, "type": "ServiceUnavailableException",
        "message": 'Model "m" has no worker to serve inference request. '
                   'Please use scale workers API to add workers.'}
