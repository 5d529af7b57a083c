"""Benchmark of the two small GANs over seeds: each run is the real script as a user runs it (a
subprocess with default flags plus --seed, one torch thread), one run at a time; after every run
the results file of its experiment is rewritten (benchmarks/results.py), so an interrupted
benchmark keeps what it measured and a rerun skips the runs already finished.

    python benchmarks/bench_small_gans.py                          # every experiment, all seeds
    python benchmarks/bench_small_gans.py --only quantiles --seeds 100 101
    python benchmarks/bench_small_gans.py --quick                  # plumbing check, no results

Experiments (results/<name>.json):
    gan_1d_normal_quantiles   python gan_1d_normal.py --mode quantiles   KS <= 0.03
    gan_1d_normal_moments     python gan_1d_normal.py                    moments within tolerance
    gan_curve_painter         python gan_curve_painter.py                >= 95% curves in bounds
Seeds: tuning 0-4 (every choice of recipe was made on them), held out 100-119 (never tuned on).
Runs land in outputs/bench_small_gans/<experiment>/<script>/s<seed>/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import HELD_OUT_SEEDS, REPO_ROOT, TUNING_SEEDS, write_results  # noqa: E402

EXPERIMENTS = {
    "gan_1d_normal_quantiles": {
        "script": "gan_1d_normal.py",
        "flags": ["--mode", "quantiles"],
        "quick": ["--epochs", "20"],
        "metrics": {"ks": "KS vs N(4, 1.25)", "w1": "W1", "mean": "mean", "std": "std",
                    "d_first_layer_slope": "D slope at the end", "train_seconds": "train s"},
        "targets": {"ks": ["<=", 0.03]},
    },
    "gan_1d_normal_moments": {
        "script": "gan_1d_normal.py",
        "flags": [],
        "quick": ["--epochs", "20"],
        "metrics": {"moments_ok": "moments within tolerance (1 = yes)", "mean": "mean",
                    "std": "std", "skewness": "skewness", "excess_kurtosis": "ex. kurtosis",
                    "ks": "KS", "train_seconds": "train s"},
        "targets": {"moments_ok": [">=", 1]},
    },
    "gan_curve_painter": {
        "script": "gan_curve_painter.py",
        "flags": [],
        "quick": ["--steps", "200"],
        "metrics": {"curves_within_bounds": "curves within bounds", "a_mean": "a mean",
                    "a_std": "a std", "a_ks_vs_uniform": "a KS vs U(1, 2)",
                    "d_real": "D(real)", "train_seconds": "train s"},
        "targets": {"curves_within_bounds": [">=", 0.95], "a_ks_vs_uniform": ["<=", 0.1]},
    },
}  # fmt: skip
NOTE = ("One run at a time, one torch thread, on a 2-core machine shared with other jobs "
        "(train s: the training loop's wall time, not a speed measurement).")  # fmt: skip


def run_one(exp: dict, seed: int, out: Path, extra: list[str]) -> dict | None:
    run_dir = out / Path(exp["script"]).stem / f"s{seed}"
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        cmd = [sys.executable, exp["script"], *exp["flags"], *extra, "--seed", str(seed),
               "--threads", "1", "--out", str(out), "--run-name", f"s{seed}", "--overwrite"]  # fmt: skip
        env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
        log = out / f"s{seed}.log"
        with open(log, "w") as f:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0:
            print(f"seed {seed}: exit {proc.returncode}, see {log}", file=sys.stderr)
            return None
    m = json.loads(metrics_path.read_text())
    return {"seed": seed, **{k: float(m[k]) for k in exp["metrics"]}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--only", nargs="+", choices=sorted(EXPERIMENTS), default=list(EXPERIMENTS),
                    help="experiments to run (default: all)")  # fmt: skip
    ap.add_argument("--seeds", type=int, nargs="+",
                    default=[*TUNING_SEEDS, *HELD_OUT_SEEDS], help="default: 0-4 and 100-119")  # fmt: skip
    ap.add_argument("--quick", action="store_true",
                    help="tiny runs to check the plumbing; writes no results file")  # fmt: skip
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "bench_small_gans")
    args = ap.parse_args()
    for name in args.only:
        exp = EXPERIMENTS[name]
        extra = exp["quick"] if args.quick else []
        out = (args.out / ("quick" if args.quick else "") / name).resolve()
        out.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            t0 = time.perf_counter()
            row = run_one(exp, seed, out, extra)
            if row is None:
                continue
            shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "seed")
            print(f"{name} seed {seed} ({time.perf_counter() - t0:.0f} s): {shown}", flush=True)
            if not args.quick:  # every finished run of this experiment, this call's or earlier
                done = sorted(int(p.parent.name[1:]) for p in out.glob("*/s*/metrics.json"))
                rows = [run_one(exp, s, out, extra) for s in done]
                command = " ".join(["python", exp["script"], *exp["flags"], "--seed {seed}"])
                write_results(name, exp["script"], command, exp["metrics"], rows,
                              targets=exp["targets"], note=NOTE)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
