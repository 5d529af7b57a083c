"""Benchmarks for real_nvp.py: the default recipe over seeds, written to results/ as data.

  # 2-D toys (moons, 8gaussians), default recipe, 4000 steps each: test NLL and its gap to the
  # generator's entropy on held-out seeds (results/real_nvp_moons.json, real_nvp_8gaussians.json)
  python benchmarks/bench_real_nvp.py toys --seeds 100-104
  # MNIST default run (about 100 min a seed on a 2-core CPU): results/real_nvp_mnist.json
  python benchmarks/bench_real_nvp.py mnist --seeds 100-102

Each run is `python real_nvp.py ... --seed S --threads 1` into outputs/bench_real_nvp/ (its
figures stay there); every finished seed is written at once, and a seed already in the results
file is not run again (--rerun to measure it anew), so an interrupted benchmark continues where
it stopped. Seeds 0-4 are tuning seeds and 100-119 held out (benchmarks/results.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import REPO_ROOT, RESULTS_DIR, write_results  # noqa: E402

TOY_METRICS = {
    "test_nll": "test NLL (nats/point)",
    "gap_to_entropy": "NLL − entropy (nats)",
    "kl_estimate": "KL(data ‖ model) estimate (nats)",
    "wall_time_min": "wall time (min)",
}
MNIST_METRICS = {"test_bpd": "test bits/dim", "wall_time_min": "wall time (min)"}


def seeds_of(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


OUT = REPO_ROOT / "outputs" / "bench_real_nvp"


def run(name: str, flags: list[str], seed: int) -> dict:
    run_name = f"{name}-s{seed}"
    cmd = [sys.executable, str(REPO_ROOT / "real_nvp.py"), *flags, "--seed", str(seed),
           "--threads", "1", "--out", str(OUT), "--run-name", run_name, "--overwrite"]  # fmt: skip
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, cwd=REPO_ROOT)
    metrics = json.loads((OUT / "real_nvp" / run_name / "metrics.json").read_text())
    metrics["wall_time_min"] = metrics["wall_time_s"] / 60
    return metrics


def earlier_rows(name: str, seeds: list[int], rerun: bool) -> list[dict]:
    """The rows already in results/NAME.json, less the seeds to be measured anew."""
    path = RESULTS_DIR / f"{name}.json"
    if not path.exists():
        return []
    rows = json.loads(path.read_text())["runs"]
    return [r for r in rows if not (rerun and r["seed"] in seeds)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=["toys", "mnist"])
    p.add_argument("--seeds", default="100-104", help="e.g. 100-104 or 0-4,100-104")
    p.add_argument("--datasets", default="moons,8gaussians", help="toys: which ones")
    p.add_argument("--rerun", action="store_true", help="measure seeds already in the file anew")
    opts = p.parse_args(argv)
    seeds = seeds_of(opts.seeds)
    if opts.what == "toys":
        jobs = {f"real_nvp_{d}": (["--dataset", d], TOY_METRICS, {"gap_to_entropy": ["<=", 0.10]},
                                  f"python real_nvp.py --dataset {d} --seed {{seed}} --threads 1")
                for d in opts.datasets.split(",")}  # fmt: skip
    else:
        jobs = {"real_nvp_mnist": ([], MNIST_METRICS, {"test_bpd": ["<=", 1.30]},
                                   "python real_nvp.py --seed {seed} --threads 1")}  # fmt: skip
    runs = {name: earlier_rows(name, seeds, opts.rerun) for name in jobs}
    for seed in seeds:  # seed-major: every dataset gets its first seeds first
        for name, (flags, metrics, targets, command) in jobs.items():
            if any(r["seed"] == seed for r in runs[name]):
                continue
            m = run(name, flags, seed)
            runs[name].append({"seed": seed, **{k: m.get(k) for k in metrics}})
            path = write_results(name, "real_nvp.py", command, metrics, runs[name], targets)
            print(f"seed {seed}: {name} {json.dumps(runs[name][-1])} -> {path}", flush=True)


if __name__ == "__main__":
    main()
