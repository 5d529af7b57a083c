"""ETTh1 at input 96: seq2seq_etth.py's held-out results beside the best published input-96
rows, written as results/seq2seq_etth_vs_published.json (a `table` for benchmarks/report.py).

Our row is the mean over held-out seeds of results/seq2seq_etth_default.json (H=96) and
results/seq2seq_etth_h{192,336,720}.json, which benchmarks/bench_seq2seq_etth.py writes:

    python benchmarks/bench_seq2seq_etth.py                                  # H=96
    python benchmarks/bench_seq2seq_etth.py --name seq2seq_etth_h192 -- --horizon 192
    python benchmarks/bench_seq2seq_etth.py --name seq2seq_etth_h336 -- --horizon 336
    python benchmarks/bench_seq2seq_etth.py --name seq2seq_etth_h720 -- --horizon 720
    python benchmarks/compare_seq2seq_published.py

Published numbers (MSE / MAE; standard split, train-only scaler, every test window) are facts
quoted from the sources named in the table, not measured here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import RESULTS_DIR, git_commit, load_results, machine  # noqa: E402

HORIZONS = (96, 192, 336, 720)
OURS = {96: "seq2seq_etth_default", 192: "seq2seq_etth_h192", 336: "seq2seq_etth_h336",
        720: "seq2seq_etth_h720"}  # fmt: skip
# model: ({horizon: (MSE, MAE or None)}, source)
PUBLISHED = {
    "SegRNN (GRU, segments of 24)": (
        {96: (0.368, 0.395), 192: (0.408, 0.419), 336: (0.444, 0.440), 720: (0.446, 0.457)},
        "SegRNN repository README, 'Lookback L = 96' table (one run)",
    ),
    "xPatch (unified setting)": (
        {96: (0.376, 0.386), 192: (0.417, 0.407), 336: (0.449, 0.425), 720: (0.470, 0.456)},
        "xPatch paper, Table 13",
    ),
    "TQNet": (
        {96: (0.371, None), 192: (0.428, None), 336: (0.476, None), 720: (0.487, None)},
        "TQNet repository result.txt",
    ),
    "CycleNet/Linear": (
        {96: (0.379, None), 192: (0.427, None), 336: (0.464, None), 720: (0.462, None)},
        "CycleNet repository result.txt (5 seeds)",
    ),
    "DLinear": (
        {96: (0.386, 0.400), 192: (0.437, 0.432), 336: (0.481, 0.459), 720: (0.519, 0.516)},
        "iTransformer paper, as quoted in the SegRNN README",
    ),
}


def cell(mse: float, mae: float | None) -> str:
    return f"{mse:.3f} / {mae:.3f}" if mae is not None else f"{mse:.3f}"


def main() -> None:
    ours, spread, seeds, commits, dates = {}, {}, set(), set(), set()
    for h, name in OURS.items():
        path = RESULTS_DIR / f"{name}.json"
        if not path.is_file():
            continue
        doc = load_results(name)
        held = doc["summary"].get("held_out")
        if not held:
            continue
        ours[h] = (held["test_mse"]["mean"], held["test_mae"]["mean"])
        spread[h] = f"± {held['test_mse']['sd']:.3f} / {held['test_mae']['sd']:.3f}"
        seeds.add(held["test_mse"]["n"])
        commits.add(doc["git_commit"])
        dates.add(doc["date"])
    rows = []
    label = f"seq2seq_etth.py default (held-out seeds, n = {'/'.join(map(str, sorted(seeds)))})"
    rows.append([label] + [cell(*ours[h]) if h in ours else "-" for h in HORIZONS]
                + [f"{sum(v[0] for v in ours.values()) / len(ours):.3f}" if len(ours) == 4
                   else "-", "this repository, results/seq2seq_etth_*.json"])  # fmt: skip
    rows.append(["  its sd over seeds"] + [spread.get(h, "-") for h in HORIZONS] + ["", ""])
    for model, (numbers, source) in PUBLISHED.items():
        avg = sum(numbers[h][0] for h in HORIZONS) / len(HORIZONS)
        rows.append([model] + [cell(*numbers[h]) for h in HORIZONS] + [f"{avg:.3f}", source])
    doc = {
        "name": "seq2seq_etth_vs_published",
        "script": "seq2seq_etth.py",
        "command": "python benchmarks/compare_seq2seq_published.py",
        "git_commit": ",".join(sorted(commits)) or git_commit(),
        "machine": machine(),
        "date": max(dates, default=""),
        "note": "ETTh1, features M, input 96; MSE / MAE on the normalised scale. Our row: mean "
        "over held-out seeds (git_commit: the commits of its result files); published rows: as "
        "their sources state them.",
        "table": {
            "columns": ["model (input 96)", "H=96", "192", "336", "720", "avg MSE", "source"],
            "rows": rows,
        },
    }
    path = RESULTS_DIR / "seq2seq_etth_vs_published.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
