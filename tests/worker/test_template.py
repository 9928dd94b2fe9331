"""worker/template.py and the template's hand-over in worker/service.py, in-process: a forked
worker reuses the template's loaded handler only for the same model (its own thread count and
frame limits aside), once; what makes forking from a template unsafe is seen. The real template
process (fork, shared weights, fallback) is tests/integration/test_preload.py's."""
from __future__ import annotations

import threading

import pytest

from protocol import messages
from worker import service
from worker.service import ModelService, keep_preloaded, load_service, take_preloaded
from tests.support.waiting import wait_until
from worker.template import fork_hazard, native_threads


def load(**changes: object) -> dict:
    fields = dict(model_dir="/m", model_name="m", handler="handler.py", manifest={},
                  batch_size=2, model_yaml_config={"preloadModel": True}, server_version="t",
                  threads=1)
    fields.update(changes)
    return messages.load(**fields)  # type: ignore[arg-type]


@pytest.fixture
def preloaded():
    kept = ModelService(lambda data, context: data, context=None)  # type: ignore[arg-type]
    keep_preloaded(load(), kept)
    yield kept
    service._preloaded = None


def test_a_worker_takes_over_the_template_s_handler_once(preloaded: ModelService) -> None:
    mine = load(threads=4, max_response_size=1 << 20, max_request_frame=1 << 20)
    assert take_preloaded(mine) is preloaded
    assert take_preloaded(mine) is None


def test_the_same_handler_with_other_settings_is_loaded_again(preloaded: ModelService,
                                                                caplog) -> None:
    assert take_preloaded(load(batch_size=8)) is None
    assert "other settings (batch_size)" in caplog.text


def test_load_service_reuses_it_without_loading(preloaded: ModelService) -> None:
    taken, error, _ = load_service(load(threads=2))   # model_dir /m does not exist
    assert taken is preloaded and error is None


def test_no_template_no_hand_over() -> None:
    assert take_preloaded(load()) is None


def test_a_thread_left_running_makes_forking_unsafe() -> None:
    before = native_threads()
    assert fork_hazard(before) is None
    release = threading.Event()
    thread = threading.Thread(target=release.wait, daemon=True)
    thread.start()
    try:
        assert "1 more thread(s) running" in str(fork_hazard(before))
    finally:
        release.set()
        thread.join(5)
    # joined, the OS thread may still be leaving /proc/self/task for a moment
    wait_until(lambda: fork_hazard(before) is None, 5, what="the thread gone")
