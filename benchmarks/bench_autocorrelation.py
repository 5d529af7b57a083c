"""Speed of autoformer_decomp.py's Auto-Correlation, and seconds per training epoch.

Part 1, the Auto-Correlation part alone (correlation by FFT, top-k delay selection, time-delay
aggregation; no Q/K/V projections) at the paper's size: batch 32, L 96, d_model 512, 8 heads,
factor 3 (k = 13), in training mode (forward + backward, batch-shared delays) and inference
mode (forward, per-sample delays), for three implementations timed in one run:

- ours: autoformer_decomp.py (spectra averaged before one inverse FFT; the k weighted shifts
  scattered into an [L, L] matrix per sample and applied with one batched matmul);
- straightforward: per-channel correlation, then torch.roll of each sample's values once per
  delay (a Python loop over samples and delays), as eq. 6 reads;
- paper-code style: per-channel correlation, then one roll of the whole batch per delay in
  training and a gather per delay in inference (our re-implementation of what the paper's code
  does, for context; the issue quotes the official code at about 81 / 62 ms on this CPU).

Part 2, seconds per training epoch of the full model in the official code's ETTh1 layout at
the issue's size (official-128: d_model 128, d_ff 512, 2 encoder + 1 decoder layers,
dropout 0.05; batch 32, input 96, label 48, horizon 96: 265 steps on ETTh1's 8449 training
windows), the configuration the official code's 77 s per epoch was measured with; timed
with autoformer_decomp.train_epoch on real ETTh1 (synthetic ETT-shaped data if it is absent).

Part 3 (optional, --compare-rounds N): training steps of that model, ours vs the same
model (same weights) with the paper-code-style Auto-Correlation, interleaved in rounds so that
a busy machine slows both alike.

Commands (the full one takes a few minutes):
    python benchmarks/bench_autocorrelation.py --epoch-threads 2 1 \
        --epoch-steps 100 --json bench.json
    python benchmarks/bench_autocorrelation.py --skip-epoch --threads 1 --repeats 5   # ~20 s
    python benchmarks/bench_autocorrelation.py --skip-autocorrelation --skip-epoch \
        --compare-rounds 4 --compare-steps 5 --threads 1                            # ~40 s
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import autoformer_decomp as af  # noqa: E402

# Model layouts timed per epoch: official-128 is the paper's layout at d_model 128 / d_ff 512
# (2 encoder + 1 decoder layers), the size the official code's 77 s per epoch was measured at.
LAYOUTS = {"cpu": ["--preset", "cpu"], "paper": ["--preset", "paper"],
           "official-128": ["--preset", "paper", "--d-model", "128", "--d-ff", "512"]}  # fmt: skip


def per_channel_correlation(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Mean correlation [B, L] the long way: one inverse FFT per channel, then the mean."""
    corr = torch.fft.irfft(torch.fft.rfft(q, dim=1) * torch.conj(torch.fft.rfft(k, dim=1)),
                           n=q.shape[1], dim=1)  # fmt: skip
    return corr.mean(-1)


def straightforward(q, k, v, top_k: int, training: bool) -> torch.Tensor:
    corr = per_channel_correlation(q, k)  # [B, L]
    weights, delays = af.select_delays(corr, top_k, batch_shared=training)
    out = []
    for b in range(q.shape[0]):  # one roll per sample and per delay
        acc = torch.zeros_like(v[b])
        for i in range(top_k):
            acc = acc + weights[b, i] * torch.roll(v[b], -int(delays[b, i]), dims=0)
        out.append(acc)
    return torch.stack(out)


def paper_code_style(q, k, v, top_k: int, training: bool) -> torch.Tensor:
    weights, delays = af.select_delays(per_channel_correlation(q, k), top_k, training)  # [B, k]
    out = torch.zeros_like(v)
    if training:  # delays shared by the batch: one roll of the whole batch per delay
        for i in range(top_k):
            out = out + weights[:, i, None, None] * torch.roll(v, -int(delays[0, i]), dims=1)
    else:  # per-sample delays: a gather per delay from the values repeated twice
        doubled = torch.cat([v, v], dim=1)
        steps = torch.arange(v.shape[1])
        for i in range(top_k):
            index = (steps[None, :] + delays[:, i, None])[..., None].expand_as(v)
            out = out + weights[:, i, None, None] * torch.gather(doubled, 1, index)
    return out


def ours(q, k, v, top_k: int, training: bool) -> torch.Tensor:
    corr = af.mean_autocorrelation(q, k)
    weights, delays = af.select_delays(corr, top_k, batch_shared=training)
    return af.time_delay_aggregation(v, weights, delays)


def time_it(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_autocorrelation(args) -> dict:
    torch.manual_seed(0)
    b, length, d = args.batch, args.length, args.d_model
    top_k = af.top_k_for(length, args.factor)
    q, k, v = (torch.randn(b, length, d, requires_grad=True) for _ in range(3))
    impls = {"ours": ours, "straightforward": straightforward, "paper_code_style": paper_code_style}
    # Same numbers from all three (checked here so a fast wrong version cannot win).
    for mode in (True, False):
        ref = straightforward(q, k, v, top_k, mode)
        for fn in impls.values():
            torch.testing.assert_close(fn(q, k, v, top_k, mode), ref, rtol=1e-4, atol=1e-4)
    results = {}
    for name, fn in impls.items():

        def train_step(fn=fn):
            out = fn(q, k, v, top_k, True)
            out.backward(torch.ones_like(out))

        def infer_step(fn=fn):
            with torch.no_grad():
                fn(q, k, v, top_k, False)

        results[name] = {
            "train_fwd_bwd_ms": 1000 * time_it(train_step, args.repeats),
            "infer_fwd_ms": 1000 * time_it(infer_step, args.repeats),
        }
        print(f"{name:>17}: train fwd+bwd {results[name]['train_fwd_bwd_ms']:7.1f} ms, "
              f"inference fwd {results[name]['infer_fwd_ms']:7.1f} ms", flush=True)  # fmt: skip
    for other in ("straightforward", "paper_code_style"):
        for key in ("train_fwd_bwd_ms", "infer_fwd_ms"):
            ratio = results[other][key] / results["ours"][key]
            results["ours"][f"speedup_vs_{other}_{key.split('_')[0]}"] = ratio
    print("speed-up of ours: " + ", ".join(
        f"{k[11:]} {v:.2f}x" for k, v in results["ours"].items() if k.startswith("speedup")))  # fmt: skip
    return {"shape": {"batch": b, "length": length, "d_model": d, "heads": args.heads,
                      "top_k": top_k}, "results": results}  # fmt: skip


def bench_epoch(args, precision: str = "float32") -> dict:
    """Seconds for one training epoch of the --epoch-preset model (train_epoch: steps only), with
    the script's --precision (float32, or bfloat16 autocast of the forward pass)."""
    argv = [*LAYOUTS[args.epoch_preset], "--horizon", "96", "--data-root", args.data_root]
    argv += ["--precision", precision]
    if args.epoch_steps:
        argv += ["--max-steps-per-epoch", str(args.epoch_steps)]
    cfg = af.parse_args(argv)
    root = Path(args.data_root)
    if not (root / "ETT-small" / "ETTh1.csv").is_file():
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import write_tiny_ett

        root = Path(tempfile.mkdtemp())
        write_tiny_ett(root / "ETT-small" / "ETTh1.csv")
        print(f"real ETTh1 not found; timing on synthetic ETT-shaped data in {root}")
    data = af.load_ett(root, "ETTh1", "M", "OT", cfg.seq_len)
    windows = af.make_windows(data.train, cfg.seq_len, af.LABEL_LEN, cfg.horizon)
    torch.manual_seed(0)
    model = af.Autoformer(len(data.columns), data.train.marks.shape[1], cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    warm = af.parse_args([*argv, "--max-steps-per-epoch", "3"])
    cpu = torch.device("cpu")
    autocast_dtype = af.resolve_precision(precision, cpu)
    af.train_epoch(model, optimizer, windows, data.out_channels, warm, cpu, 0, autocast_dtype)
    stats = af.train_epoch(model, optimizer, windows, data.out_channels, cfg, cpu, 1,
                           autocast_dtype)  # fmt: skip
    per_step = stats["train_seconds"] / stats["train_steps"]
    full_steps = -(-len(windows[0]) // cfg.batch_size)
    result = {"precision": precision, "steps_timed": stats["train_steps"],
              "seconds_per_step": per_step,
              "steps_per_epoch": full_steps, "seconds_per_epoch": per_step * full_steps,
              "measured_full_epoch": stats["train_steps"] == full_steps}  # fmt: skip
    print(f"{args.epoch_preset} training ({precision}): {per_step:.3f} s/step, {result['seconds_per_epoch']:.1f} s per "
          f"epoch of {full_steps} steps ({stats['train_steps']} steps timed)")  # fmt: skip
    return result


class PaperStyleAutoCorrelation(torch.nn.Module):
    """The same layer (same weights) with paper_code_style's correlation and aggregation."""

    def __init__(self, layer: af.AutoCorrelation):
        super().__init__()
        self.layer = layer

    def forward(self, queries, keys, values):
        layer, length = self.layer, queries.shape[1]
        q, k, v = layer.query(queries), layer.key(keys), layer.value(values)
        if k.shape[1] < length:
            k = torch.nn.functional.pad(k, (0, 0, 0, length - k.shape[1]))
            v = torch.nn.functional.pad(v, (0, 0, 0, length - v.shape[1]))
        k, v = k[:, :length], v[:, :length]
        top_k = af.top_k_for(length, layer.factor)
        return layer.out(paper_code_style(q, k, v, top_k, self.training))


def paper_style_model(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` (same weights) whose Auto-Correlation is built the way the paper's
    code builds it: per-channel correlation with roll/gather aggregation."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, af.AutoCorrelation):
                setattr(module, name, PaperStyleAutoCorrelation(child))
    return model


def bench_epoch_compare(args) -> dict:
    """Training steps of the official-128 model, ours vs paper_style_model, interleaved in
    rounds on the same batches so that a busy machine slows both alike; the ratio is the
    robust number, seconds per epoch are extrapolated from seconds per step."""
    cfg = af.parse_args([*LAYOUTS["official-128"], "--horizon", "96"])
    torch.manual_seed(0)
    n_windows, c_in, n_marks = 8449, 7, 4  # ETTh1 standard split, horizon 96: 265 steps
    ours_model = af.Autoformer(c_in, n_marks, cfg)
    models = {"ours": ours_model, "paper_code_style": paper_style_model(ours_model)}
    batches = [(torch.randn(32, 96, c_in), torch.rand(32, 96, n_marks) - 0.5,
                torch.rand(32, 144, n_marks) - 0.5, torch.randn(32, 96, c_in))
               for _ in range(args.compare_steps)]  # fmt: skip

    def run(name: str, model, optimizer) -> float:
        model.train()
        t0 = time.perf_counter()
        for x, x_mark, y_mark, target in batches:
            loss = torch.nn.functional.mse_loss(model(x, x_mark, y_mark), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - t0) / len(batches)

    optimizers = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
    for name in models:  # warm-up
        run(name, models[name], optimizers[name])
    per_step = {name: [] for name in models}
    for _ in range(args.compare_rounds):
        for name in models:
            per_step[name].append(run(name, models[name], optimizers[name]))
    steps = -(-n_windows // 32)
    result = {name: {"seconds_per_step": statistics.median(v), "rounds": v,
                     "seconds_per_epoch": statistics.median(v) * steps}
              for name, v in per_step.items()}  # fmt: skip
    result["speedup"] = (result["paper_code_style"]["seconds_per_step"]
                         / result["ours"]["seconds_per_step"])  # fmt: skip
    for name in models:
        print(f"{name:>17}: {result[name]['seconds_per_step']:.3f} s/step, "
              f"{result[name]['seconds_per_epoch']:.1f} s per {steps}-step epoch")  # fmt: skip
    print(f"training-step speed-up of ours over the paper-code-style model: "
          f"{result['speedup']:.2f}x")  # fmt: skip
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=96)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--heads", type=int, default=8, help="recorded; the delays are head-shared")
    p.add_argument("--factor", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--epoch-steps", type=int, default=0, help="0: time a whole epoch")
    p.add_argument("--skip-epoch", action="store_true")
    p.add_argument("--epoch-preset", choices=sorted(LAYOUTS), default="official-128",
                   help="model timed per epoch: official-128 is the layout the official code's "
                   "77 s was measured with; cpu is autoformer_decomp.py's default")  # fmt: skip
    p.add_argument("--epoch-threads", type=int, nargs="+", default=[0],
                   help="thread counts for the epoch timing (0: as --threads)")  # fmt: skip
    p.add_argument("--epoch-precision", nargs="+", default=["float32"],
                   choices=["float32", "bfloat16", "auto"],
                   help="autoformer_decomp.py --precision values to time the epoch with")  # fmt: skip
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--data-root", default=str(REPO / "data"))
    p.add_argument(
        "--compare-rounds",
        type=int,
        default=0,
        help="rounds of the interleaved ours-vs-paper-code-style model timing (0: skip)",
    )
    p.add_argument("--compare-steps", type=int, default=5, help="training steps per round")
    p.add_argument("--skip-autocorrelation", action="store_true")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    default_threads = torch.get_num_threads()
    report = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
              "threads": torch.get_num_threads(), "torch": torch.__version__}  # fmt: skip
    if not args.skip_autocorrelation:
        report["autocorrelation"] = bench_autocorrelation(args)
    if args.compare_rounds:
        report["epoch_compare"] = bench_epoch_compare(args)
    if not args.skip_epoch:
        report["epoch"] = {}
        for threads in args.epoch_threads:  # on a shared CPU, 1 thread can beat 2
            torch.set_num_threads(threads or default_threads)
            print(f"training-epoch timing with {torch.get_num_threads()} thread(s):")
            report["epoch"][torch.get_num_threads()] = {
                precision: bench_epoch(args, precision) for precision in args.epoch_precision
            }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
