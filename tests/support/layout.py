"""The oracle of TorchServe's JSON layout for tests that read raw bodies: what its GSON pretty
printer writes for a document, then the newline its HTTP bodies end with."""
from __future__ import annotations

import json
from typing import Any


def torchserve_layout(document: Any) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
