"""Autoformer on ETTh1 over seeds and horizons: runs autoformer_decomp.py and tabulates the test
MSE/MAE (normalised scale, every test window), epochs, seconds per epoch and wall time per run.

Runs already finished (their metrics.json exists) are not repeated, so the table can be filled
in over several sessions. Each run is a plain `python autoformer_decomp.py ...` subprocess.

Command (heavy: about 5-10 minutes per run on a 2-core CPU):
    python benchmarks/bench_autoformer_etth1.py --horizons 96 --seeds 0 1 2 \
        -- --threads 1
    python benchmarks/bench_autoformer_etth1.py --horizons 192 336 720 \
        --seeds 0 1 2 -- --threads 1
(flags after `--` go to autoformer_decomp.py; --threads 1 because the CPU is shared)
Table only (no training):  python benchmarks/bench_autoformer_etth1.py --summary-only
Writes <out>/autoformer_decomp/bench_<preset>_<features>/summary.{md,json} and the run folders
h<H>_s<seed> beside them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# For comparison in the table: the paper's published ETTh1 multivariate results (d_model 512).
PAPER = {96: "0.449 / 0.459", 192: "0.500 / -", 336: "0.521 / -", 720: "0.514 / -"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--horizons", type=int, nargs="+", default=[96])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--features", default="M")
    p.add_argument("--out", default=str(REPO / "outputs"))
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    p.add_argument("extra", nargs="*", help="more flags for autoformer_decomp.py (after --)")
    args = p.parse_args()
    folder = Path(args.out) / "autoformer_decomp" / f"bench_{args.preset}_{args.features}"
    folder.mkdir(parents=True, exist_ok=True)

    for horizon in args.horizons:
        for seed in args.seeds:
            name = f"h{horizon}_s{seed}"
            if args.summary_only or (folder / name / "metrics.json").is_file():
                continue
            cmd = [sys.executable, str(REPO / "autoformer_decomp.py"), "--preset", args.preset,
                   "--features", args.features, "--horizon", str(horizon), "--seed", str(seed),
                   "--out", str(folder.parent.parent), "--run-name", f"{folder.name}/{name}",
                   *args.extra]  # fmt: skip
            print("$ " + " ".join(cmd), flush=True)
            t0 = time.time()
            try:
                subprocess.run(cmd, check=True, timeout=args.timeout, cwd=REPO)
            except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
                # Keep going with the other runs; the table shows only finished ones.
                print(f"run {name} did not finish: {exc}", flush=True)
                continue
            wall = time.time() - t0
            metrics_path = folder / name / "metrics.json"
            metrics = json.loads(metrics_path.read_text())
            metrics["wall_seconds"] = wall
            metrics_path.write_text(json.dumps(metrics, indent=2))

    rows, summary = [], {}
    for horizon in sorted({int(d.name[1:].split("_")[0]) for d in folder.glob("h*_s*")}):
        runs = []
        for d in sorted(folder.glob(f"h{horizon}_s*")):
            if (d / "metrics.json").is_file():
                runs.append(json.loads((d / "metrics.json").read_text()))
        if not runs:
            continue
        mse = [r["test_mse"] for r in runs]
        mae = [r["test_mae"] for r in runs]
        spread = lambda v: f" ± {statistics.stdev(v):.3f}" if len(v) > 1 else ""
        epoch_s = [r["seconds_per_train_epoch"] for r in runs]
        walls = [r.get("wall_seconds") for r in runs if r.get("wall_seconds")]
        summary[horizon] = {"seeds": [r["seed"] for r in runs], "mse": mse, "mae": mae,
                            "epochs": [r["epochs_run"] for r in runs],
                            "seconds_per_train_epoch": epoch_s, "wall_seconds": walls}  # fmt: skip
        paper = PAPER.get(horizon, "-")
        minutes = f"{statistics.mean(walls) / 60:.1f}" if walls else "-"
        rows.append(
            f"| {horizon} | {len(runs)} ({', '.join(str(r['seed']) for r in runs)}) | "
            f"{statistics.mean(mse):.3f}{spread(mse)} | {statistics.mean(mae):.3f}{spread(mae)} | "
            f"{', '.join(str(r['epochs_run']) for r in runs)} | {statistics.mean(epoch_s):.0f} | "
            f"{minutes} | {paper} |"
        )
    table = "\n".join(
        [f"ETTh1, features {args.features}, preset {args.preset}; test MSE / MAE on the "
         "normalised scale over every test window (mean ± std over seeds)", "",
         "| horizon | seeds | MSE | MAE | epochs run | s / train epoch | min / run | "
         "paper (d_model 512) MSE / MAE |", "|---|---|---|---|---|---|---|---|", *rows]
    )  # fmt: skip
    (folder / "summary.md").write_text(table + "\n")
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table)


if __name__ == "__main__":
    main()
