"""Benchmarks for real_nvp.py: training throughput and the bits/dim-vs-wall-time curve.

  # images/s for training at the default batch (64) and model, and images/s for evaluation
  python benchmarks/bench_real_nvp.py throughput --device cpu
  # the test-bits/dim-vs-wall-time curve of a run (table on stdout + PNG beside the log)
  python benchmarks/bench_real_nvp.py curve outputs/real_nvp/<run>/log.jsonl

Throughput uses random uint8 images (speed does not depend on the pixel values) and times
optimizer steps after a warm-up; the number depends on the load of the machine, so run it under
the shared lock and report the machine and date beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import real_nvp  # noqa: E402


def throughput(argv: list[str]) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--num-threads", type=int, default=0)
    opts, model_args = p.parse_known_args(argv)
    if opts.num_threads:
        torch.set_num_threads(opts.num_threads)
    args = real_nvp.parse_args(["--device", opts.device, *model_args])
    device = real_nvp.pick_device(args.device)
    model = real_nvp.build_model(args).to(device)
    opt = real_nvp.make_optimizer(model, args)
    shape = real_nvp.IMAGE_SHAPES[args.dataset]
    x_u8 = torch.randint(0, 256, (args.batch_size, *shape), dtype=torch.uint8, device=device)
    dims = model.num_dims

    def step():
        x = real_nvp.dequantize(x_u8)
        loss = real_nvp.bits_per_dim(real_nvp.image_log_prob(model, x, args.logit_alpha), dims)
        loss = loss.mean() + args.l2_scale * real_nvp.scale_l2(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(opts.warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(opts.steps):
        step()
    sync()
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        x = real_nvp.dequantize(x_u8.repeat(4, 1, 1, 1))
        real_nvp.image_log_prob(model, x, args.logit_alpha)
        sync()
        t0 = time.perf_counter()
        for _ in range(3):
            real_nvp.image_log_prob(model, x, args.logit_alpha)
        sync()
        eval_s = time.perf_counter() - t0
    result = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "params": sum(p.numel() for p in model.parameters()),
        "train_images_per_s": opts.steps * args.batch_size / train_s,
        "train_s_per_batch": train_s / opts.steps,
        "eval_images_per_s": 3 * len(x) / eval_s,
        "model_flags": model_args,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(result, indent=2))
    return result


def curve(argv: list[str]) -> list[tuple[float, float]]:
    p = argparse.ArgumentParser()
    p.add_argument("log", type=Path)
    opts = p.parse_args(argv)
    rows = [json.loads(line) for line in opts.log.read_text().splitlines() if line.strip()]
    pts = [(r["elapsed_s"], r["step"], r["test_bpd"]) for r in rows if "test_bpd" in r]
    if not pts:
        raise SystemExit(f"error: {opts.log} has no test_bpd rows")
    print("| wall time (min) | step | test bits/dim |\n|---|---|---|")
    for t, s, b in pts:
        print(f"| {t / 60:.1f} | {s} | {b:.4f} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([t / 60 for t, _, _ in pts], [b for _, _, b in pts], marker="o")
    ax.set_xlabel("wall time (min)")
    ax.set_ylabel("test bits/dim")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = opts.log.with_name("bench_bpd_vs_time.png")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return [(t, b) for t, _, b in pts]


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("throughput", "curve"):
        raise SystemExit("usage: bench_real_nvp.py throughput [flags] | curve LOG.jsonl")
    {"throughput": throughput, "curve": curve}[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
