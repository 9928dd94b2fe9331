"""The shortest path through the real thing: register, predict, describe, unregister."""
from __future__ import annotations


def test_register_predict_unregister(shared_daemon):
    d = shared_daemon
    r = d.register("noop.mar", model_name="smoke", initial_workers=1)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": 'Model "smoke" Version: 1.0 registered with 1 initial workers'}
    p = d.infer("POST", "/predictions/smoke", data=b"x")
    assert p.status_code == 200 and p.json() == {"ok": 1}
    assert "x-request-id" in p.headers
    workers = d.workers("smoke")
    assert len(workers) == 1 and workers[0]["status"] == "READY" and workers[0]["pid"] > 0
    assert d.unregister("smoke").json() == {"status": 'Model "smoke" unregistered'}
    assert d.infer("POST", "/predictions/smoke").status_code == 404
