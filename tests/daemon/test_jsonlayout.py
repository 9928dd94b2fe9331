"""TorchServe's JSON layout (daemon/jsonlayout.py): GSON's pretty printer, a newline after a
body, and the error body's direct spelling equal to the general one."""
from __future__ import annotations

import json

import pytest

from daemon.jsonlayout import document_bytes, document_text, error_bytes


def test_a_status_message_as_torchserve_documents_it() -> None:
    # TorchServe's management API page shows the register answer so, and curl prints it so
    assert document_bytes({"status": 'Model "squeezenet_v1.1" Version: 1.0 registered with 1 '
                                     'initial workers'}) == (
        b'{\n  "status": "Model \\"squeezenet_v1.1\\" Version: 1.0 registered with 1 initial '
        b'workers"\n}\n')


def test_nested_documents_indent_two_spaces_a_level_and_empty_ones_stay_closed() -> None:
    described = [{"modelName": "m", "minWorkers": 1, "loadedAtStartup": False, "ignored": [],
                  "meta": {}, "workers": [{"id": "9000", "status": "READY"}]}]
    assert document_text(described) == """[
  {
    "modelName": "m",
    "minWorkers": 1,
    "loadedAtStartup": false,
    "ignored": [],
    "meta": {},
    "workers": [
      {
        "id": "9000",
        "status": "READY"
      }
    ]
  }
]"""
    assert document_bytes(described) == document_text(described).encode() + b"\n"


def test_text_beyond_ascii_is_written_as_utf8_not_escaped() -> None:
    assert document_bytes({"status": "Modèle «é»"}) == '{\n  "status": "Modèle «é»"\n}\n'.encode()


def test_a_document_json_cannot_spell_is_refused() -> None:
    with pytest.raises(ValueError):
        document_bytes({"x": float("nan")})


@pytest.mark.parametrize("message", [
    "Model not found: m", 'Model "m" job queue is full', "back\\slash", "tab\there\nline",
    "control \x01\x1f", "é ü 模型 😀", "", "quote \" and \u2028"])
def test_the_error_body_is_the_general_layout_of_its_document(message: str) -> None:
    document = {"code": 404, "type": "ModelNotFoundException", "message": message}
    spelled = error_bytes(404, "ModelNotFoundException", message)
    assert spelled == document_bytes(document)
    assert json.loads(spelled) == document
