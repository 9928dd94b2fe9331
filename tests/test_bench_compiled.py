"""The pure parts of scripts/bench's compiled round (no server): its archives' model-config.yaml
files, the request rows, its metrics and goals in the report, the one-line summary.

The round itself (real servers, real compiles) runs with scripts/bench --compiled."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from bench_models.compiled_model import IN_FEATURES  # noqa: E402
from bench_models.make_weights import sample_row  # noqa: E402
from benchlib import compiled  # noqa: E402
from benchlib.report import medians, metrics_for, table_rows  # noqa: E402

pytestmark = pytest.mark.timeout(30)
MODELS = REPO / "scripts" / "bench_models"


def test_the_compiled_archive_asks_for_inductor_and_warms_up_with_one_row() -> None:
    config = yaml.safe_load((MODELS / "compiled.yaml").read_text())
    assert config["pt2"] == {"compile": {"enable": True, "backend": "inductor"}}
    [row] = config["handler"]["warmup"]
    assert len(row) == IN_FEATURES and all(isinstance(v, float) for v in row)
    assert "pt2" not in yaml.safe_load((MODELS / "eager.yaml").read_text())
    assert yaml.safe_load((MODELS / "preload.yaml").read_text()) == {"preloadModel": True}


def test_rows_are_fixed_and_as_wide_as_asked() -> None:
    assert sample_row(64) == sample_row(64) and len(sample_row(7168)) == 7168
    assert all(-1.0 <= v <= 1.0 for v in sample_row(256))


def test_the_round_has_its_goals_in_the_report() -> None:
    keys = {m.key: m for m in metrics_for("compiled")}
    assert keys["compile_scale_ratio"].limit == 0.5
    assert keys["preload_uss_ratio"].limit == 1.3
    assert keys["compiled_max_abs_diff"].limit == 1e-4
    assert all(m.suite == "compiled" for m in keys.values())
    assert "compile_scale_ratio" in {m.key for m in metrics_for("all")}
    runs = {"torchd": [{"compile_scale_ratio": 0.3, "preload_uss_ratio": 0.2},
                       {"compile_scale_ratio": 0.4, "preload_uss_ratio": 0.1}],
            "torchserve": [{"compile_scale_ratio": 0.7, "preload_uss_ratio": 7.0}]}
    rows = {row["metric"]: row for row in table_rows(medians(runs, None, list(keys.values())),
                                                     list(keys.values()))}
    assert rows["compile_scale_ratio"]["torchd"] == pytest.approx(0.35)
    assert rows["compile_scale_ratio"]["met"] is True
    assert rows["preload_uss_ratio"]["met"] is True and rows["preload_uss_ratio"]["ratio"] \
        == pytest.approx(0.15 / 7.0)


def test_summary_names_every_headline_figure() -> None:
    line = compiled.summary({"compile_first_answer_s": 20.0, "compile_scale_s": 5.0,
                             "compile_scale_ratio": 0.25, "compiled_rps": 900.0,
                             "eager_rps": 800.0, "compiled_max_abs_diff": 1e-7,
                             "preload_workers_uss_mb": 22.0, "preload_uss_ratio": 0.11,
                             "preload_pss_mb": 350.0})
    assert "first answer 20.0 s" in line and "scale 1 -> 3 5.0 s (x0.25)" in line
    assert "900 vs eager 800 req/s" in line and "USS 22 MiB (x0.11 the weights)" in line
