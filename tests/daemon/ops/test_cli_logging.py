"""torchd's command line: its logging setup (daemon.ops.foreground.configure_logging) in a fresh
interpreter, plain by default or from a --log-config file."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


# --- logging ----------------------------------------------------------------------------------

LOG_PROBE = textwrap.dedent("""
    import logging, sys
    from pathlib import Path
    from daemon.ops.foreground import configure_logging
    from daemon.config.settings import ConfigError
    configure_logging(None)
    logging.getLogger("daemon.probe").info("before")
    try:
        configure_logging(Path(sys.argv[1]) if sys.argv[1] != "-" else None)
    except ConfigError as exc:
        print("ERROR", exc)
        sys.exit(3)
    logging.getLogger("daemon.probe").warning("after")
""")


def log_probe(tmp_path: Path, config: Path | None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LOG_PROBE, str(config) if config else "-"],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path,
                          check=False)


def test_default_logging_is_plain_lines_on_stderr(tmp_path):
    result = log_probe(tmp_path, None)
    lines = result.stderr.splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d INFO daemon.probe: before", lines[0])
    assert lines[1].endswith("WARNING daemon.probe: after")


def dict_config(log_file: Path) -> dict:
    return {"version": 1, "formatters": {"f": {"format": "CUSTOM %(name)s %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log_file),
                                  "formatter": "f"}},
            "root": {"level": "INFO", "handlers": ["file"]}}


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".ini"])
def test_log_config_files(tmp_path, suffix):
    log_file = tmp_path / "out.log"
    config = tmp_path / f"logging{suffix}"
    if suffix == ".json":
        config.write_text(json.dumps(dict_config(log_file)))
    elif suffix == ".yaml":
        import yaml
        config.write_text(yaml.safe_dump(dict_config(log_file)))
    else:
        config.write_text(textwrap.dedent(f"""
            [loggers]
            keys=root
            [handlers]
            keys=file
            [formatters]
            keys=f
            [logger_root]
            level=INFO
            handlers=file
            [handler_file]
            class=FileHandler
            formatter=f
            args=({str(log_file)!r},)
            [formatter_f]
            format=CUSTOM %(name)s %(message)s
        """))
    result = log_probe(tmp_path, config)
    assert result.returncode == 0, result.stderr
    assert log_file.read_text() == "CUSTOM daemon.probe after\n"


def test_bad_log_config_names_the_file(tmp_path):
    config = tmp_path / "broken.json"
    config.write_text("{nope")
    result = log_probe(tmp_path, config)
    assert result.returncode == 3
    assert "log_config" in result.stdout and "broken.json" in result.stdout


def test_log4j_xml_is_ignored_with_a_warning(tmp_path):
    config = tmp_path / "log4j2.xml"
    config.write_text("<Configuration/>")
    result = log_probe(tmp_path, config)
    assert result.returncode == 0
    assert "log4j2 XML" in result.stderr
    assert "WARNING daemon.probe: after" in result.stderr
