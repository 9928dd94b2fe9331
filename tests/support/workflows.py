"""Build workflow archives (.war) with the real torch-workflow-archiver, as TorchServe users do."""
from __future__ import annotations

import sys
from pathlib import Path

from tests.support.archives import run_archiver

WORKFLOW_ARCHIVER = Path(sys.executable).with_name("torch-workflow-archiver")


def build_war(name: str, spec: str, out_dir: Path, work: Path, handler: str | None = None,
              ) -> Path:
    """``spec`` (the spec YAML's text) and ``handler`` (the functions' module text, if any)
    archived as workflow ``name`` into ``out_dir/<name>.war``."""
    work.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_file = work / f"{name}.yaml"
    spec_file.write_text(spec)
    cmd = [str(WORKFLOW_ARCHIVER), "--workflow-name", name, "--spec-file", str(spec_file),
           "--export-path", str(out_dir), "--force"]
    if handler is not None:
        handler_file = work / f"{name}_handler.py"
        handler_file.write_text(handler)
        cmd += ["--handler", str(handler_file)]
    run_archiver(cmd)
    return out_dir / f"{name}.war"
