"""Results as data: one JSON file per experiment in results/, written by the benchmarks through
`write_results`, rendered into README.md and docs/*.md by benchmarks/report.py.

A results file:
    {"name": "gan_1d_normal_quantiles", "script": "gan_1d_normal.py",
     "command": "python gan_1d_normal.py --mode quantiles --seed {seed}",
     "metrics": {"ks": "KS vs N(4, 1.25)", ...},      # column order and header text
     "targets": {"ks": ["<=", 0.03]},                  # optional: rate of seeds meeting it
     "runs": [{"seed": 100, "split": "held_out", "ks": 0.011, ...}, ...],
     "summary": {"held_out": {"ks": {"n": 20, "mean": ..., "sd": ..., "min": ..., "max": ...,
                                      "met": 19}}, "tuning": {...}},
     "git_commit": "...", "machine": "...", "date": "YYYY-MM-DD", "note": "..."}

Seeds 0-4 are tuning seeds (every choice of recipe was made on them, on validation metrics);
seeds 100 and up are held out: nothing was ever chosen on them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "results"
TUNING_SEEDS = (0, 1, 2, 3, 4)
HELD_OUT_SEEDS = tuple(range(100, 120))
SPLITS = ("held_out", "tuning")


def split_of(seed: int) -> str:
    return "tuning" if seed in TUNING_SEEDS else "held_out"


def machine() -> str:
    """A short description of where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True)  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True)  # fmt: skip
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def meets(value: float, target: list) -> bool:
    op, bound = target
    return {"<=": value <= bound, ">=": value >= bound, "<": value < bound, ">": value > bound}[op]


def summarize(runs: list[dict], metrics: dict, targets: dict) -> dict:
    summary: dict = {}
    for split in SPLITS:
        rows = [r for r in runs if r["split"] == split]
        if not rows:
            continue
        summary[split] = {}
        for m in metrics:
            values = [float(r[m]) for r in rows if r.get(m) is not None]
            if not values:
                continue
            n = len(values)
            mean = sum(values) / n
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
            s = {"n": n, "mean": mean, "sd": sd, "min": min(values), "max": max(values)}
            if m in targets:
                s["met"] = sum(meets(v, targets[m]) for v in values)
            summary[split][m] = s
    return summary


def write_results(
    name: str, script: str, command: str, metrics: dict, runs: list[dict],
    targets: dict | None = None, note: str = "",
) -> Path:  # fmt: skip
    """Write results/<name>.json; `runs` are dicts with `seed` and one value per metric."""
    targets = targets or {}
    for r in runs:
        r.setdefault("split", split_of(int(r["seed"])))
    doc = {
        "name": name,
        "script": script,
        "command": command,
        "metrics": metrics,
        "targets": targets,
        "runs": sorted(runs, key=lambda r: (r["split"] != "tuning", r["seed"])),
        "summary": summarize(runs, metrics, targets),
        "git_commit": git_commit(),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "note": note,
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def load_results(name: str) -> dict:
    return json.loads((RESULTS_DIR / f"{name}.json").read_text())
