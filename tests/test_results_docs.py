"""Result tables in README.md and docs/ are rendered from results/*.json (benchmarks/report.py):
a document whose table disagrees with its JSON fails here, and the renderer's arithmetic is
checked against a hand computation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import report  # noqa: E402

import results  # noqa: E402


def test_every_rendered_table_matches_its_json():
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "report.py"), "--check"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_summary_statistics_and_target_rate(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(report, "load_results", lambda name: json.loads(
        (tmp_path / f"{name}.json").read_text()))  # fmt: skip
    runs = [{"seed": s, "ks": v} for s, v in [(0, 0.5), (100, 0.01), (101, 0.03), (102, 0.05)]]
    results.write_results("toy", "toy.py", "python toy.py --seed {seed}", {"ks": "KS"}, runs,
                          targets={"ks": ["<=", 0.03]})  # fmt: skip
    doc = json.loads((tmp_path / "toy.json").read_text())
    held = doc["summary"]["held_out"]["ks"]
    assert held["n"] == 3 and held["met"] == 2
    assert abs(held["mean"] - 0.03) < 1e-12 and abs(held["sd"] - 0.02) < 1e-12
    assert doc["summary"]["tuning"]["ks"]["n"] == 1
    text = (
        "x <!-- results: toy -->old<!-- /results --> y <!-- headline: toy ks -->?<!-- /headline -->"
    )
    out = report.render(text)
    assert "| held-out (3: 100-102) | 0.0300 ± 0.0200 (0.0100–0.0500); 2 of 3 meet it |" in out
    assert "| tuning (1: 0) | 0.500 ± 0 (0.500–0.500); 1 of 1 meet it |" not in out  # 0.5 > 0.03
    assert "0.0300 ± 0.0200 (3 held-out seeds)<!-- /headline -->" in out
    assert report.render(out) == out  # rendering is idempotent
