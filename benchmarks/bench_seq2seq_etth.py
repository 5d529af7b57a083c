"""Quality benchmark for seq2seq_etth.py: trains the README table's settings over seeds on the
standard ETTh1 protocol and writes a summary (mean +- sample std over seeds, wall time).

Each (setting, seed) is one `python seq2seq_etth.py ...` run in
<out>/seq2seq_etth/bench-<setting>-s<seed>/; runs whose metrics.json already exists are reused
(pass --force to retrain), so the table can be filled in over several sessions. The summary goes
to <out>/bench_seq2seq_etth/summary.json and summary.md.

Commands (CPU jobs: take the shared lock on a shared machine):
    python benchmarks/bench_seq2seq_etth.py --settings M96 M96-in --seeds 0
    python benchmarks/bench_seq2seq_etth.py --settings M24 M24-in S24 S24-in
    python benchmarks/bench_seq2seq_etth.py --settings all --seeds 0 1 2
    python benchmarks/bench_seq2seq_etth.py --summarize-only       # table from existing runs
Quick check of the runner itself (seconds per run, meaningless numbers):
    python benchmarks/bench_seq2seq_etth.py --settings M24 --seeds 0 --out /tmp/bench \\
        --extra=--epochs=1 --extra=--max-train-batches=5
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
SCRIPT = REPO / "seq2seq_etth.py"

# setting name -> seq2seq_etth.py flags (input length 96 everywhere, the benchmark's L).
SETTINGS: dict[str, list[str]] = {}
for _h in (24, 96, 192, 336, 720):
    # "-in": per-window instance norm (the script's default since 2026-12-01); the plain names
    # are the notes' globally normalised model. Both spelled out, so old runs stay comparable.
    SETTINGS[f"M{_h}"] = ["--features", "M", "--horizon", str(_h), "--instance-norm", "none"]
    SETTINGS[f"M{_h}-in"] = ["--features", "M", "--horizon", str(_h), "--instance-norm", "last"]
    SETTINGS[f"S{_h}"] = ["--features", "S", "--horizon", str(_h), "--instance-norm", "none"]
    SETTINGS[f"S{_h}-in"] = ["--features", "S", "--horizon", str(_h), "--instance-norm", "last"]
    # "-ci": instance norm + one shared univariate model for all seven channels.
    SETTINGS[f"M{_h}-ci"] = SETTINGS[f"M{_h}-in"] + ["--channel-independent"]
    # "-seg24": 24 time steps per LSTM step in encoder and decoder (SegRNN's ETTh1 segment).
    SETTINGS[f"M{_h}-ci-seg24"] = SETTINGS[f"M{_h}-ci"] + ["--segment", "24"]
    SETTINGS[f"S{_h}-in-seg24"] = SETTINGS[f"S{_h}-in"] + ["--segment", "24"]

# Published ETTh1 numbers (standard protocol, normalised MSE/MAE) for the table's last column.
PUBLISHED = {
    "M24": "Informer 0.577/0.549, LSTMa 0.650/0.624",
    "M96": "Autoformer 0.449/0.459, DLinear 0.386/0.400, SegRNN 0.368/0.395",
    "S24": "Informer 0.098 MSE",
}


def mean_spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def run_one(setting: str, seed: int, args) -> dict | None:
    run_name = f"bench-{setting}-s{seed}"
    metrics_path = Path(args.out) / "seq2seq_etth" / run_name / "metrics.json"
    if metrics_path.is_file() and not args.force:
        print(f"[{setting} seed {seed}] reusing {metrics_path}", flush=True)
        return json.loads(metrics_path.read_text())
    if args.summarize_only:
        return None
    cmd = [
        sys.executable,
        str(SCRIPT),
        *SETTINGS[setting],
        "--seed",
        str(seed),
        "--data-root",
        args.data_root,
        "--out",
        args.out,
        "--run-name",
        run_name,
        "--threads",
        str(args.threads),
        *args.extra,
    ]
    print(f"[{setting} seed {seed}] {' '.join(cmd)}", flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n")
        raise SystemExit(f"error: {setting} seed {seed} failed (exit {proc.returncode})")
    metrics = json.loads(metrics_path.read_text())
    metrics["wall_seconds"] = wall
    metrics_path.write_text(json.dumps(metrics, indent=2))
    print(
        f"[{setting} seed {seed}] MSE {metrics['mse']:.4f} MAE {metrics['mae']:.4f} "
        f"(persistence {metrics['persistence']['mse']:.4f}) {wall:.0f}s",
        flush=True,
    )
    return metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--settings",
        nargs="+",
        default=None,
        help=f"'all' or names from: {', '.join(SETTINGS)} (default: M96 M96-in; "
        "with --summarize-only: all)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", default="outputs")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (1 is fastest when the cores are shared)",
    )
    p.add_argument(
        "--extra",
        action="append",
        default=[],
        help="extra flag for seq2seq_etth.py, repeatable: --extra=--epochs=1",
    )
    p.add_argument("--force", action="store_true", help="retrain runs that already have metrics")
    p.add_argument("--summarize-only", action="store_true", help="no training, table only")
    args = p.parse_args()
    if args.settings is None:
        args.settings = ["all"] if args.summarize_only else ["M96", "M96-in"]
    names = list(SETTINGS) if args.settings == ["all"] else args.settings
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        p.error(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")

    rows, summary = [], {}
    for name in names:
        results = [(seed, run_one(name, seed, args)) for seed in args.seeds]
        results = [(seed, m) for seed, m in results if m is not None]
        if not results:
            continue

        def get(key: str, results=results) -> list[float]:
            return [m[key] for _, m in results if key in m]

        entry = {
            "flags": SETTINGS[name],
            "seeds": [seed for seed, _ in results],
            "mse": get("mse"),
            "mae": get("mae"),
            "target_mse_orig": get("target_mse_orig"),
            "persistence_mse": [m["persistence"]["mse"] for _, m in results],
            "persistence_mae": [m["persistence"]["mae"] for _, m in results],
            "train_seconds": get("train_seconds"),
            "wall_seconds": get("wall_seconds"),
            "best_epoch": get("best_epoch"),
        }
        summary[name] = entry
        rows.append(
            f"| {name} | {' '.join(SETTINGS[name])} | {len(results)} | {mean_spread(entry['mse'])} "
            f"| {mean_spread(entry['mae'])} | {statistics.mean(entry['persistence_mse']):.3f} / "
            f"{statistics.mean(entry['persistence_mae']):.3f} | "
            f"{statistics.mean(entry['train_seconds']) / 60:.1f} | {PUBLISHED.get(name.split('-')[0], '')} |"
        )
    out_dir = Path(args.out) / "bench_seq2seq_etth"
    out_dir.mkdir(parents=True, exist_ok=True)
    header = (
        "| setting | flags | seeds | MSE | MAE | persistence MSE / MAE | train min | published |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    table = "\n".join([header, *rows])
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "summary.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
