"""Benchmark of the two small GANs: gan_1d_normal.py in all five discriminator-input modes and
gan_curve_painter.py, each over 3 seeds at their default sizes, against the targets of issue 6.

    python benchmarks/bench_small_gans.py                                 # full: 18 runs
    python benchmarks/bench_small_gans.py --summarize-only --run-name NAME   # tables from finished runs
    python benchmarks/bench_small_gans.py --epochs 20 --steps 200 --run-name quick   # plumbing check

Wall time: with two runs side by side on a 2-core Intel Xeon (2026-12-02) each default 1-D
run takes about 40-55 s of training in the notes' modes and 140 s in quantiles mode (R1 runs
through autograd), each painter run about 25 s; the full benchmark took 10 minutes. Split it
with --modes / --no-painter / --no-1d. Each run is the real script as a user runs it (a
subprocess, default flags plus --seed), so the seconds column is the script's own training time
(metrics.json `train_seconds`, training loop only, no start-up or plotting). With --jobs 2 two
runs share the machine's 2 cores (one torch thread each). Writes outputs/bench_small_gans/<run-name>/summary.md (the README tables) and
summary.json, and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODES = ("raw", "diffs", "variances", "moments", "quantiles")


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} exited {proc.returncode}; see {log}")
    return time.perf_counter() - t0


def fmt(v: float, digits: int = 3) -> str:
    return f"{v:.{digits}f}"


def mean_sd(values: list[float], digits: int = 3) -> str:
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--epochs", type=int, default=None, help="override gan_1d_normal's --epochs")
    ap.add_argument("--steps", type=int, default=None, help="override gan_curve_painter's --steps")
    ap.add_argument("--one-d-args", default="", help="extra flags for gan_1d_normal, one string")
    ap.add_argument("--painter-args", default="", help="extra flags for the painter, one string")
    ap.add_argument("--no-painter", action="store_true")
    ap.add_argument("--no-1d", action="store_true")
    ap.add_argument(
        "--summarize-only",
        action="store_true",
        help="run nothing: rebuild the summary from the runs already in --run-name "
        "(e.g. after a timeout); unfinished runs are listed as missing",
    )
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (one torch thread each)")
    ap.add_argument("--out", default="outputs")
    ap.add_argument("--run-name", default=time.strftime("%Y%m%d-%H%M%S"))
    args = ap.parse_args()

    bench_dir = Path(args.out).resolve() / "bench_small_gans" / args.run_name
    bench_dir.mkdir(parents=True, exist_ok=True)
    runs_out = bench_dir / "runs"
    jobs = []  # (kind, key, seed, cmd, run_dir)
    if not args.no_1d:
        for mode in args.modes:
            for seed in args.seeds:
                name = f"{mode}_s{seed}"
                cmd = [
                    sys.executable,
                    "gan_1d_normal.py",
                    "--mode",
                    mode,
                    "--seed",
                    str(seed),
                    "--out",
                    str(runs_out),
                    "--run-name",
                    name,
                ]
                cmd += args.one_d_args.split()
                if args.epochs:
                    cmd += ["--epochs", str(args.epochs)]
                jobs.append(("1d", mode, seed, cmd, runs_out / "gan_1d_normal" / name))
    if not args.no_painter:
        for seed in args.seeds:
            name = f"painter_s{seed}"
            cmd = [
                sys.executable,
                "gan_curve_painter.py",
                "--seed",
                str(seed),
                "--out",
                str(runs_out),
                "--run-name",
                name,
                *args.painter_args.split(),
            ]
            if args.steps:
                cmd += ["--steps", str(args.steps)]
            jobs.append(("painter", "painter", seed, cmd, runs_out / "gan_curve_painter" / name))

    t0 = time.perf_counter()
    if args.summarize_only:
        walls = [float("nan")] * len(jobs)
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            walls = list(pool.map(lambda j: run(j[3], bench_dir / f"{j[4].name}.log"), jobs))
    total = time.perf_counter() - t0

    results, missing = [], []
    for (kind, key, seed, cmd, run_dir), wall in zip(jobs, walls, strict=True):
        if not (run_dir / "metrics.json").is_file():
            missing.append(" ".join(["python", *cmd[1:]]))
            continue
        m = json.loads((run_dir / "metrics.json").read_text())
        results.append(
            {
                "kind": kind,
                "key": key,
                "seed": seed,
                "wall_s": round(wall, 1),
                "command": " ".join(["python", *cmd[1:]]),
                **m,
            }
        )

    lines = [
        f"Machine: {os.cpu_count()}-CPU host, {args.jobs} runs in parallel, one torch thread "
        f"each; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"benchmark wall time {total / 60:.1f} min.",
        "",
    ]
    one_d = [r for r in results if r["kind"] == "1d"]
    if one_d:
        lines += [
            "### gan_1d_normal.py: 10,000 samples from the final G, target Normal(4, 1.25)",
            "",
            "| mode | seed | mean | std | skewness | ex. kurtosis | KS | W1 | max 0.1σ-bin mass "
            "| D first-layer slope | train s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in one_d:
            # runs from before 2026-12-01 did not record D's health
            slope = r.get("d_first_layer_slope")
            lines.append(
                f"| {r['key']} | {r['seed']} | {fmt(r['mean'])} | {fmt(r['std'])} | "
                f"{fmt(r['skewness'])} | {fmt(r['excess_kurtosis'])} | {fmt(r['ks'], 4)} | "
                f"{fmt(r['w1'], 4)} | {fmt(r['max_bin_mass'])} | "
                f"{'-' if slope is None else fmt(slope)} | {r['train_seconds']:.1f} |"
            )
        lines += [
            "",
            "Mean ± sd over seeds:",
            "",
            "| mode | mean | std | skewness | ex. kurtosis | KS | W1 | train s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for mode in args.modes:
            rs = [r for r in one_d if r["key"] == mode]
            if not rs:
                continue
            col = lambda k, d=3, rs=rs: mean_sd([r[k] for r in rs], d)
            lines.append(
                f"| {mode} | {col('mean')} | {col('std')} | {col('skewness')} | "
                f"{col('excess_kurtosis')} | {col('ks', 4)} | {col('w1', 4)} | "
                f"{col('train_seconds', 1)} |"
            )
        checks = []
        mom = [r for r in one_d if r["key"] == "moments"]
        if mom:
            ok = all(
                abs(r["mean"] - 4) <= 0.05
                and abs(r["std"] - 1.25) <= 0.05
                and abs(r["skewness"]) <= 0.15
                and abs(r["excess_kurtosis"]) <= 0.3
                for r in mom
            )
            checks.append(
                f"moments mode, every seed |mean-4|<=0.05, |std-1.25|<=0.05, |skew|<=0.15, "
                f"|kurt|<=0.3: {'MET' if ok else 'MISSED'}"
            )
        qua = [r for r in one_d if r["key"] == "quantiles"]
        if qua:
            ok = all(r["ks"] <= 0.03 and r["w1"] <= 0.05 for r in qua)
            checks.append(
                f"quantiles mode, every seed KS<=0.03 and W1<=0.05: {'MET' if ok else 'MISSED'}"
            )
        lines += [""] + [f"- {c}" for c in checks]
    painter = [r for r in results if r["kind"] == "painter"]
    if painter:
        lines += [
            "",
            "### gan_curve_painter.py: 1,000 curves from the final generator",
            "",
            "| seed | curves within bounds | points within | a mean | a std | a KS vs U(1,2) | "
            "fit residual rms | D(real) | D(fake) | raw G: curves within | train s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in painter:
            lines.append(
                f"| {r['seed']} | {fmt(r['curves_within_bounds'])} | {fmt(r['points_within_bounds'])} | "
                f"{fmt(r['a_mean'])} | {fmt(r['a_std'])} | {fmt(r['a_ks_vs_uniform'])} | "
                f"{fmt(r['fit_residual_rms'])} | {fmt(r['d_real'])} | {fmt(r['d_fake'])} | "
                f"{fmt(r['raw_generator']['curves_within_bounds'])} | {r['train_seconds']:.1f} |"
            )
        ok = all(
            r["curves_within_bounds"] >= 0.95
            and abs(r["a_mean"] - 1.5) <= 0.05
            and abs(r["a_std"] - 0.2887) <= 0.05
            and r["a_ks_vs_uniform"] <= 0.1
            for r in painter
        )
        lines += [
            "",
            f"- painter, every seed >=95% curves within bounds, |a mean-1.5|<=0.05, "
            f"|a std-0.289|<=0.05, KS<=0.1: {'MET' if ok else 'MISSED'}",
        ]
    lines += ["", "Commands:", ""] + [f"    {r['command']}" for r in results]
    if missing:
        lines += ["", "Not finished (no metrics.json):", ""] + [f"    {c}" for c in missing]
    text = "\n".join(lines) + "\n"
    (bench_dir / "summary.md").write_text(text)
    (bench_dir / "summary.json").write_text(json.dumps(results, indent=2))
    print(text)
    print(f"wrote {bench_dir / 'summary.md'}")


if __name__ == "__main__":
    main()
