"""seq2seq_etth.py over seeds: one `python seq2seq_etth.py --seed S --threads 1 FLAGS` run per
seed, then results/<name>.json through benchmarks/results.py (test MSE/MAE on the normalised
scale over every test window, best validation MSE, seconds per epoch, parameters).

Runs whose metrics.json exists are reused, so a set can be filled in over several sessions;
the JSON always holds every finished seed of the set. Tuning seeds 0-4, held-out 100-119.

    python benchmarks/bench_seq2seq_etth.py                       # default recipe, H=96, M
    python benchmarks/bench_seq2seq_etth.py --name seq2seq_etth_tuning --seeds 0 1 2 3 4
    python benchmarks/bench_seq2seq_etth.py --name seq2seq_etth_h336 -- --horizon 336
    python benchmarks/bench_seq2seq_etth.py --name seq2seq_etth_S -- --features S
    python benchmarks/bench_seq2seq_etth.py --name seq2seq_etth_notes -- --preset notes
Quick check of the runner (seconds, meaningless numbers, nothing written to results/):
    python benchmarks/bench_seq2seq_etth.py --seeds 0 --out /tmp/b --dry -- --epochs 1 \\
        --max-train-batches 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import HELD_OUT_SEEDS, REPO_ROOT, write_results  # noqa: E402

METRICS = {
    "test_mse": "test MSE",
    "test_mae": "test MAE",
    "best_val_mse": "best val MSE",
    "seconds_per_epoch": "s / epoch",
    "epochs_run": "epochs",
    "n_params": "parameters",
}
RECIPE = "default recipe (channel-independent, 24-step segments, L1 training loss)"
TITLES = {
    "seq2seq_etth_default": f"ETTh1, M, input 96, H=96, {RECIPE}",
    "seq2seq_etth_tuning": f"ETTh1, M, input 96, H=96, {RECIPE}, tuning seeds",
    **{f"seq2seq_etth_h{h}": f"ETTh1, M, input 96, H={h}, {RECIPE}" for h in (192, 336, 720)},
    "seq2seq_etth_S": "ETTh1, S (OT alone), input 96, H=96; MSE/MAE over OT",
    "seq2seq_etth_MS": "ETTh1, MS (all channels in, OT out), input 96, H=96; MSE/MAE over OT",
    "seq2seq_etth_notes": "ETTh1, M, H=24, `--preset notes`",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="seq2seq_etth_default", help="results/<name>.json")
    p.add_argument("--seeds", type=int, nargs="+", default=list(HELD_OUT_SEEDS[:5]))
    p.add_argument("--out", type=Path, default=REPO_ROOT / "outputs")
    p.add_argument("--dry", action="store_true", help="run, but write no results file")
    p.add_argument("flags", nargs="*", help="flags for seq2seq_etth.py (after --)")
    args = p.parse_args()
    folder = args.out / "seq2seq_etth"
    for seed in args.seeds:
        run = folder / f"bench-{args.name}-s{seed}"
        if (run / "metrics.json").is_file():
            continue
        cmd = [sys.executable, str(REPO_ROOT / "seq2seq_etth.py"), "--seed", str(seed),
               "--threads", "1", "--out", str(args.out), "--run-name", run.name,
               "--overwrite", *args.flags]  # fmt: skip
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO_ROOT)
    runs = []
    for path in sorted(folder.glob(f"bench-{args.name}-s*/metrics.json")):
        m = json.loads(path.read_text())
        seed = int(path.parent.name.rsplit("-s", 1)[1])
        runs.append({"seed": seed, "test_mse": m["mse"], "test_mae": m["mae"],
                     **{k: m[k] for k in METRICS if k in m}})  # fmt: skip
        print(f"seed {seed}: " + ", ".join(f"{k} {runs[-1][k]:.4g}" for k in METRICS))
    if args.dry:
        return
    command = "python seq2seq_etth.py --seed {seed} --threads 1 " + " ".join(args.flags)
    path = write_results(args.name, "seq2seq_etth.py", command.strip(), METRICS, runs,
                         note=TITLES.get(args.name, ""))  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
