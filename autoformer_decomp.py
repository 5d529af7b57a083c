"""Autoformer (series decomposition + Auto-Correlation) forecasting ETTh1, and the decomposition.

Paper: Wu, Xu, Wang, Long, "Autoformer: Decomposition Transformers with Auto-Correlation for
Long-Term Series Forecasting", NeurIPS 2021. The notes study the series-decomposition block
(eq. 1) and stop at Auto-Correlation (Sec. 3.2); this script implements the whole model:

- series decomposition (eq. 1): trend = moving average with the series' ends repeated so the
  length is kept, seasonal = input - trend; used on the input and inside every layer;
- Auto-Correlation (eqs. 5-6): period-based dependencies from the autocorrelation of queries
  and keys (FFT, Wiener-Khinchin), the top k = floor(c ln L) delays, softmax over their
  correlations, and time-delay aggregation of the values rolled by each delay;
- encoder (eq. 3) keeping only the seasonal part, decoder (eq. 4) with self and cross
  Auto-Correlation and a trend accumulated from every decomposition.

Data: the ETT benchmark protocol of seq2seq_etth.py (imported, not copied): standard split
(12/4/4 months), scaler fitted on train rows, every test window scored, MSE/MAE on the
normalised scale. Input 96, label 48, horizon 96/192/336/720, features M|S|MS.

Full run (cpu preset, horizon 96, all 7 channels; bf16 matmuls in training where the hardware
has them natively, --precision float32 to turn that off):  python autoformer_decomp.py
Paper-size model:                                   python autoformer_decomp.py --preset paper
Decomposition figures only:                         python autoformer_decomp.py --decompose-only
Quick check (seconds):  python autoformer_decomp.py --epochs 1 --max-steps-per-epoch 5 \
                            --d-model 16 --d-ff 32 --n-heads 2

Writes outputs/autoformer_decomp/<run-name>/: config.json, metrics.json, log.jsonl,
checkpoint.pt (model, optimizer, scheduler, RNG, best weights; --resume continues it),
pred.npy / true.npy (test windows x horizon x scored channels, normalised, window order),
loss_curves.png, test_window.png (forecast with the model's final trend and seasonal parts),
decomposition_<target>.png and decomposition_channels.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from seq2seq_etth import ETT_NAMES, ETTData, load_ett, make_windows

# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

# The paper's ETTh1 settings (Sec. 4 and its code's ETTh1 script) and our smaller CPU size.
# "official-128" is the paper's layout at d_model 128 / d_ff 512: the configuration the speed
# benchmarks compare against the official code. "cpu" is chosen on validation MSE over 3 seeds
# (README): one encoder layer generalises better on ETTh1's 8,449 training windows (with two,
# validation MSE is lowest after epoch 1-2); dropout 0.05 beat 0.1 with that one layer.
PRESETS: dict[str, dict] = {
    "paper": dict(d_model=512, n_heads=8, e_layers=2, d_layers=1, d_ff=2048, dropout=0.05,
                  factor=3.0, moving_avg=25),
}  # fmt: skip
PRESETS["official-128"] = {**PRESETS["paper"], "d_model": 128, "d_ff": 512}
PRESETS["cpu"] = {**PRESETS["official-128"], "e_layers": 1}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="cpu",
        help="model size; individual flags below override it (default cpu)",
    )
    p.add_argument(
        "--data",
        default="ETTh1",
        help=f"one of {', '.join(ETT_NAMES)} or a CSV path with a date column",
    )
    p.add_argument(
        "--features",
        choices=["M", "S", "MS"],
        default="M",
        help="M: all channels in and out; S: target only; MS: all in, target out",
    )
    p.add_argument("--target", default="OT")
    p.add_argument("--split", choices=["standard", "notes"], default="standard")
    p.add_argument("--seq-len", type=int, default=96)
    p.add_argument("--label-len", type=int, default=48)
    p.add_argument("--horizon", type=int, default=96, help="96, 192, 336 or 720 in the paper")
    # Model size (None: take the preset's value).
    p.add_argument("--d-model", type=int)
    p.add_argument("--n-heads", type=int)
    p.add_argument("--e-layers", type=int)
    p.add_argument("--d-layers", type=int)
    p.add_argument("--d-ff", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--factor", type=float, help="c in top k = floor(c ln L) (paper eq. 6)")
    p.add_argument("--moving-avg", type=int, help="moving-average kernel of the decomposition")
    p.add_argument(
        "--delays-per-head",
        action="store_true",
        help="each head picks its own delays (paper eq. 6) instead of sharing the "
        "delays of the head-averaged correlation (the paper's code, default)",
    )
    # Training (paper Sec. 4: Adam 1e-4, batch 32, 10 epochs, early stopping).
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument(
        "--lr-decay",
        type=float,
        default=0.5,
        help="lr multiplier per epoch from epoch 3 on (the paper's code: epochs 1-2 at --lr)",
    )
    p.add_argument(
        "--max-steps-per-epoch",
        type=int,
        default=0,
        help="cap on training batches per epoch (0: all); for quick checks",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="training compute dtype (autocast: matmuls in bf16; weights, optimizer, loss, FFTs "
        "and evaluation stay float32). auto: bfloat16 where the hardware has it natively "
        "(CUDA with bf16, CPUs with AVX512-BF16/AMX), else float32",
    )
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--log-every", type=int, default=50, help="steps between plain log lines")
    # Decomposition figures.
    p.add_argument(
        "--decompose-only", action="store_true", help="write the decomposition figures and exit"
    )
    p.add_argument(
        "--decomp-kernels",
        default="5,25,49,97",
        help="comma-separated moving-average kernels for the decomposition figure",
    )
    p.add_argument(
        "--plot-hours",
        type=int,
        default=24 * 21,
        help="rows of the test period shown in the decomposition figures",
    )
    # Common flags.
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", default="outputs")
    p.add_argument("--run-name", default=time.strftime("%Y%m%d-%H%M%S"))
    p.add_argument("--resume", help="checkpoint.pt of a run to continue (in its own folder)")
    return p  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    positive = ["seq_len", "horizon", "d_model", "n_heads", "e_layers", "d_layers", "d_ff",
                "moving_avg", "epochs", "patience", "batch_size", "eval_batch_size", "log_every"]  # fmt: skip
    for key in positive:
        if getattr(args, key) <= 0:
            parser.error(f"--{key.replace('_', '-')} must be positive, got {getattr(args, key)}")
    if not 0 <= args.label_len <= args.seq_len:
        parser.error(f"--label-len must be in [0, --seq-len={args.seq_len}], got {args.label_len}")
    if args.d_model % args.n_heads:
        parser.error(f"--d-model {args.d_model} is not divisible by --n-heads {args.n_heads}")
    if not 0 <= args.dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.factor <= 0 or args.lr <= 0 or not 0 < args.lr_decay <= 1:
        parser.error("--factor and --lr must be positive and --lr-decay in (0, 1]")
    if args.max_steps_per_epoch < 0 or args.threads < 0:
        parser.error("--max-steps-per-epoch and --threads must be >= 0")
    try:
        args.decomp_kernels = [int(k) for k in str(args.decomp_kernels).split(",") if k.strip()]
    except ValueError:
        parser.error(f"--decomp-kernels takes integers like 5,25,49, got {args.decomp_kernels!r}")
    if not args.decomp_kernels or min(args.decomp_kernels) <= 0:
        parser.error("--decomp-kernels needs at least one positive kernel size")
    if args.resume and not Path(args.resume).is_file():
        parser.error(f"--resume {args.resume}: no such checkpoint file")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    return args


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(choice: str, device: torch.device) -> torch.dtype | None:
    """--precision -> the training autocast dtype (None: plain float32). Emulated bf16 (CPUs
    without native support) is slower than float32, so auto only picks it where it is native."""
    if choice == "bfloat16":
        return torch.bfloat16
    if choice == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Series decomposition (paper Sec. 3.1, eq. 1)
# --------------------------------------------------------------------------------------------


def moving_average_pool(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Moving average over time of x [B, L, C], same length out, by padding and pooling.

    The ends are padded by repeating the first and last values (eq. 1's Padding), not zeros,
    so the trend does not sag towards 0 at the edges. The paper's code pads (k-1)//2 on both
    sides, which loses a step for even k; here the back gets the remainder so any k keeps L."""
    front = (kernel_size - 1) // 2
    back = kernel_size - 1 - front
    padded = torch.cat([x[:, :1].expand(-1, front, -1), x, x[:, -1:].expand(-1, back, -1)], dim=1)
    return F.avg_pool1d(padded.transpose(1, 2), kernel_size, stride=1).transpose(1, 2)


_AVERAGING_MATRICES: dict[tuple, torch.Tensor] = {}


def averaging_matrix(length: int, kernel_size: int, device, dtype) -> torch.Tensor:
    """The [L, L] matrix M with M @ x == moving_average_pool(x): row t holds 1/k at the
    window's positions t-front .. t+back, clamped to [0, L-1] (clamping = repeating the end
    values). Cached: the model applies it 8 times per step with the same L and k."""
    key = (length, kernel_size, str(device), dtype)
    if key not in _AVERAGING_MATRICES:
        front = (kernel_size - 1) // 2
        offsets = torch.arange(kernel_size) - front
        cols = (torch.arange(length)[:, None] + offsets[None, :]).clamp(0, length - 1)
        src = torch.full(cols.shape, 1.0 / kernel_size, dtype=torch.float64)
        matrix = torch.zeros(length, length, dtype=torch.float64).scatter_add(1, cols, src)
        _AVERAGING_MATRICES[key] = matrix.to(device=device, dtype=dtype)
    return _AVERAGING_MATRICES[key]


def moving_average(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Moving average over time of x [B, L, C] with repeated end values, same length out.

    For model-sized windows it is one matmul with a cached [L, L] averaging matrix: on a CPU
    that beats pad + transpose + pool + transpose, whose copies dominate at these sizes, and
    its backward is one matmul too. Long series (the decomposition figures) use pooling."""
    length = x.shape[1]
    if length > 1024:
        return moving_average_pool(x, kernel_size)
    return averaging_matrix(length, kernel_size, x.device, x.dtype) @ x


class SeriesDecomposition(nn.Module):
    """eq. 1: X_t = AvgPool(Padding(X)), X_s = X - X_t. Returns (seasonal, trend)."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        trend = moving_average(x, self.kernel_size)
        return x - trend, trend


# --------------------------------------------------------------------------------------------
# Auto-Correlation (paper Sec. 3.2, eqs. 5-6)
# --------------------------------------------------------------------------------------------


def mean_autocorrelation(q: torch.Tensor, k: torch.Tensor, groups: int) -> torch.Tensor:
    """R_{Q,K}(tau) for tau = 0..L-1 (eq. 5, Wiener-Khinchin), averaged over the channels of
    each of `groups` channel groups. q, k: [B, L, D] -> [B, groups, L].

    R(tau) = sum_t q[t + tau] k[t] (circular) = IFFT(FFT(q) * conj(FFT(k)))[tau]. Because the
    inverse FFT is linear, averaging the spectra over channels BEFORE the inverse transform gives
    the same mean correlation with one inverse FFT per group instead of one per channel."""
    length = q.shape[1]
    # FFTs in float32 even under bf16 autocast: correlations of 96-step series summed in bf16
    # would lose the small differences between delays that the top-k choice depends on.
    if q.dtype in (torch.bfloat16, torch.float16):
        q, k = q.float(), k.float()
    q_freq = torch.fft.rfft(q, dim=1)
    k_freq = torch.fft.rfft(k, dim=1)
    cross = q_freq * torch.conj(k_freq)  # [B, L//2+1, D]
    cross = cross.view(cross.shape[0], cross.shape[1], groups, -1).mean(-1)
    return torch.fft.irfft(cross, n=length, dim=1).transpose(1, 2)  # [B, groups, L]


def select_delays(
    corr: torch.Tensor, top_k: int, batch_shared: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top_k delays of corr [B, G, L] and their softmax weights (eq. 6), both [B, G, k].

    Training (batch_shared): one set of delays per group, picked from the batch-mean
    correlation, with each sample's own correlations at those delays as weights (the paper's
    code does this for speed). Inference: each sample picks its own delays, so a window's
    forecast does not depend on which other windows share its batch."""
    if batch_shared:
        delays = corr.mean(0).topk(top_k, dim=-1).indices  # [G, k]
        delays = delays.unsqueeze(0).expand(corr.shape[0], -1, -1)
        weights = corr.gather(-1, delays)
    else:
        weights, delays = corr.topk(top_k, dim=-1)
    return torch.softmax(weights, dim=-1), delays


def time_delay_aggregation(
    values: torch.Tensor, weights: torch.Tensor, delays: torch.Tensor
) -> torch.Tensor:
    """sum_i weights_i * Roll(V, tau_i) (eq. 6) for values [B, G, L, E], weights/delays
    [B, G, k] -> [B, G, L, E], where Roll(V, tau)[t] = V[(t + tau) mod L].

    Instead of k rolls (or B*k of them with per-sample delays), the k weighted shifts are
    scattered into one [L, L] matrix per (sample, group), A[t, (t + tau_i) mod L] += w_i, and
    applied with one batched matmul: no Python loop over samples or delays, and the same code
    serves batch-shared and per-sample delays. Gradients reach the weights through the scatter."""
    length = values.shape[-2]
    steps = torch.arange(length, device=values.device)
    columns = (steps[:, None] + delays[..., None, :]) % length  # [B, G, L, k]
    src = weights[..., None, :].expand(columns.shape).to(values.dtype)
    shift = values.new_zeros(*delays.shape[:-1], length, length).scatter_add(-1, columns, src)
    return shift @ values


def time_delay_aggregation_reference(
    values: torch.Tensor, weights: torch.Tensor, delays: torch.Tensor
) -> torch.Tensor:
    """Slow, obviously-correct eq. 6: one torch.roll per sample, group and delay. Used by the
    tests (against time_delay_aggregation) and benchmarks/bench_autocorrelation.py."""
    out = torch.zeros_like(values)
    batch, groups, _, _ = values.shape
    for b in range(batch):
        for g in range(groups):
            for i in range(delays.shape[-1]):
                rolled = torch.roll(values[b, g], shifts=-int(delays[b, g, i]), dims=0)
                out[b, g] = out[b, g] + weights[b, g, i] * rolled
    return out


def top_k_for(length: int, factor: float) -> int:
    """k = floor(c * ln L) (Sec. 3.2), at least 1 and at most L."""
    return max(1, min(length, int(factor * math.log(length))))


class AutoCorrelation(nn.Module):
    """Multi-head Auto-Correlation (eq. 6): project Q, K, V to d_model = n_heads x d_head,
    find period-based delays from the Q-K autocorrelation, aggregate the rolled values, project.

    With delays_per_head=False (default, as the paper's code) the correlation is averaged over
    all heads and channels and every head uses the same delays; with True each head picks its
    own delays from its own channels, as eq. 6 is written."""

    def __init__(self, d_model: int, n_heads: int, factor: float, delays_per_head: bool = False):
        super().__init__()
        self.n_heads, self.factor = n_heads, factor
        self.groups = n_heads if delays_per_head else 1
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        batch, length, _ = queries.shape
        q, k, v = self.query(queries), self.key(keys), self.value(values)
        # Keys/values shorter than the queries (decoder cross-attention: 96 encoder steps, 144
        # decoder steps) are zero-padded at the end; longer ones are cut to the query length.
        if k.shape[1] < length:
            k = F.pad(k, (0, 0, 0, length - k.shape[1]))
            v = F.pad(v, (0, 0, 0, length - v.shape[1]))
        k, v = k[:, :length], v[:, :length]
        corr = mean_autocorrelation(q, k, self.groups)  # eq. 5
        weights, delays = select_delays(corr, top_k_for(length, self.factor), self.training)
        v = v.reshape(batch, length, self.groups, -1).transpose(1, 2)  # [B, G, L, E]
        agg = time_delay_aggregation(v, weights, delays)  # eq. 6
        return self.out(agg.transpose(1, 2).reshape(batch, length, -1))


# --------------------------------------------------------------------------------------------
# Model (paper Sec. 3.1: embedding, encoder eq. 3, decoder eq. 4)
# --------------------------------------------------------------------------------------------


class FastDropout(nn.Module):
    """Inverted dropout whose mask comes from 16-bit slices of 64-bit random integers.

    nn.Dropout draws one random number per element, and on a CPU that draw costs several
    times more than the layer it follows (measured: about a quarter of a training step of this
    model). Four 16-bit lanes per 64-bit draw quarter the generator's work; p is rounded to a
    multiple of 1/65536 (0.05 -> 0.0500031). Identity in eval mode, like nn.Dropout."""

    def __init__(self, p: float):
        super().__init__()
        self.threshold = round(p * 65536)  # drop when the lane (as unsigned) is below this
        self.p = self.threshold / 65536

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        n = x.numel()
        draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
        lanes = draws.random_(-(2**63), 2**63 - 1).view(torch.int16)[:n].view(x.shape)
        drop = lanes < self.threshold - 32768  # int16 lane + 32768 is uniform on 0..65535
        return x.masked_fill(drop, 0.0) * (1.0 / (1.0 - self.p))


class DataEmbedding(nn.Module):
    """Token embedding (a width-3 circular convolution over time) plus the 'timeF' time
    features through a linear layer; no positional embedding: Auto-Correlation only compares
    a series with shifted copies of itself, so absolute positions carry nothing it needs."""

    def __init__(self, c_in: int, n_marks: int, d_model: int, dropout: float):
        super().__init__()
        self.token = nn.Conv1d(c_in, d_model, 3, padding=1, padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.token.weight, mode="fan_in", nonlinearity="leaky_relu")
        self.time = nn.Linear(n_marks, d_model, bias=False)
        self.dropout = FastDropout(dropout)

    def forward(self, x: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.token(x.transpose(1, 2)).transpose(1, 2) + self.time(marks))


class SeasonalLayerNorm(nn.Module):
    """LayerNorm over channels, then the time mean removed: the seasonal part has no level
    (the paper's code, 'my_Layernorm')."""

    def __init__(self, d_model: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return x - x.mean(dim=1, keepdim=True)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        # Pointwise layers without bias, as the paper's code (1x1 convolutions there).
        self.net = nn.Sequential(
            nn.Linear(d_model, d_ff, bias=False), nn.GELU(), FastDropout(dropout),
            nn.Linear(d_ff, d_model, bias=False), FastDropout(dropout),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderLayer(nn.Module):
    """eq. 3: S1 = Decomp(AutoCorr(X) + X), S2 = Decomp(FeedForward(S1) + S1); the trend
    parts are dropped: the encoder models the seasonal part only."""

    def __init__(self, d_model, n_heads, d_ff, dropout, factor, moving_avg, delays_per_head):
        super().__init__()
        self.attention = AutoCorrelation(d_model, n_heads, factor, delays_per_head)
        self.feed_forward = FeedForward(d_model, d_ff, dropout)
        self.decomp1 = SeriesDecomposition(moving_avg)
        self.decomp2 = SeriesDecomposition(moving_avg)
        self.dropout = FastDropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.decomp1(x + self.dropout(self.attention(x, x, x)))
        x, _ = self.decomp2(x + self.feed_forward(x))
        return x


class DecoderLayer(nn.Module):
    """eq. 4: seasonal path through self Auto-Correlation, cross Auto-Correlation with the
    encoder output and the feed-forward, each followed by a decomposition; the three trend
    parts are summed and projected to the output channels (W_l in eq. 4) for accumulation."""

    def __init__(self, d_model, n_heads, d_ff, dropout, factor, moving_avg, delays_per_head, c_out):
        super().__init__()
        self.self_attention = AutoCorrelation(d_model, n_heads, factor, delays_per_head)
        self.cross_attention = AutoCorrelation(d_model, n_heads, factor, delays_per_head)
        self.feed_forward = FeedForward(d_model, d_ff, dropout)
        self.decomps = nn.ModuleList(SeriesDecomposition(moving_avg) for _ in range(3))
        self.dropout = FastDropout(dropout)
        self.trend_projection = nn.Conv1d(
            d_model, c_out, 3, padding=1, padding_mode="circular", bias=False
        )

    def forward(self, x: torch.Tensor, cross: torch.Tensor):
        x, trend1 = self.decomps[0](x + self.dropout(self.self_attention(x, x, x)))
        x, trend2 = self.decomps[1](x + self.dropout(self.cross_attention(x, cross, cross)))
        x, trend3 = self.decomps[2](x + self.feed_forward(x))
        trend = self.trend_projection((trend1 + trend2 + trend3).transpose(1, 2)).transpose(1, 2)
        return x, trend


class Autoformer(nn.Module):
    def __init__(self, c_in: int, n_marks: int, args):
        super().__init__()
        self.label_len, self.horizon = args.label_len, args.horizon
        layer = dict(d_model=args.d_model, n_heads=args.n_heads, d_ff=args.d_ff,
                     dropout=args.dropout, factor=args.factor, moving_avg=args.moving_avg,
                     delays_per_head=args.delays_per_head)  # fmt: skip
        self.decomp = SeriesDecomposition(args.moving_avg)
        self.enc_embedding = DataEmbedding(c_in, n_marks, args.d_model, args.dropout)
        self.dec_embedding = DataEmbedding(c_in, n_marks, args.d_model, args.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(**layer) for _ in range(args.e_layers))
        self.encoder_norm = SeasonalLayerNorm(args.d_model)
        self.decoder = nn.ModuleList(
            DecoderLayer(**layer, c_out=c_in) for _ in range(args.d_layers)
        )
        self.decoder_norm = SeasonalLayerNorm(args.d_model)
        self.seasonal_projection = nn.Linear(args.d_model, c_in)

    def forward(
        self, x: torch.Tensor, x_mark: torch.Tensor, y_mark: torch.Tensor, components=False
    ):
        """x [B, L, C], x_mark [B, L, F], y_mark [B, label_len + H, F] -> forecast [B, H, C]
        (and, with components=True, its final seasonal and trend parts, each [B, H, C])."""
        # Decoder inputs (Sec. 3.1): the last label_len steps of the input's seasonal and trend
        # parts, followed by H placeholders: zeros for the seasonal, the input mean for the trend.
        seasonal, trend = self.decomp(x)
        n_pad = self.horizon
        mean = x.mean(dim=1, keepdim=True).expand(-1, n_pad, -1)
        zeros = x.new_zeros(x.shape[0], n_pad, x.shape[2])
        seasonal_init = torch.cat([seasonal[:, x.shape[1] - self.label_len :], zeros], dim=1)
        trend = torch.cat([trend[:, x.shape[1] - self.label_len :], mean], dim=1)

        enc = self.enc_embedding(x, x_mark)
        for layer in self.encoder:  # eq. 3
            enc = layer(enc)
        enc = self.encoder_norm(enc)

        dec = self.dec_embedding(seasonal_init, y_mark)
        for layer in self.decoder:  # eq. 4: T_de^l = T_de^{l-1} + sum_i W_{l,i} T_de^{l,i}
            dec, trend_part = layer(dec, enc)
            trend = trend + trend_part
        seasonal_out = self.seasonal_projection(self.decoder_norm(dec))
        # Final prediction: W_S * X_de^M + T_de^M (Sec. 3.1).
        forecast = (seasonal_out + trend)[:, -self.horizon :]
        if components:
            return forecast, seasonal_out[:, -self.horizon :], trend[:, -self.horizon :]
        return forecast


# --------------------------------------------------------------------------------------------
# Evaluation and plots
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(model, windows, device, batch_size: int, components: bool = False):
    """Forecasts for every window (eval mode: per-sample delays), as CPU tensors [N, H, C]."""
    model.eval()
    x, _, x_mark, y_mark = windows
    outs: list[list[torch.Tensor]] = [[], [], []]
    for start in range(0, len(x), batch_size):
        sl = slice(start, start + batch_size)
        result = model(
            x[sl].to(device), x_mark[sl].to(device), y_mark[sl].to(device), components=components
        )
        result = result if components else (result,)
        for store, part in zip(outs, result):
            store.append(part.float().cpu())
    return [torch.cat(store) for store in outs if store]


def score(pred: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    diff = pred.double() - true.double()
    return {"mse": float((diff**2).mean()), "mae": float(diff.abs().mean())}


def plot_decomposition(data: ETTData, kernels: list[int], default_kernel: int, hours: int,
                       out_dir: Path) -> list[Path]:  # fmt: skip
    """Input / trend / seasonal of the first `hours` test-period rows, original units:
    the target for several kernels, and every channel for the default kernel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo = data.borders["val"][1]  # first row of the test period proper
    hours = max(2, min(hours, len(data.raw) - lo))
    frame = data.raw.iloc[lo : lo + hours]
    dates = frame["date"].to_numpy()
    values = torch.tensor(frame[data.columns].to_numpy(np.float64))[None]  # [1, T, C]
    paths = []

    # Figure 1: the target, one row per kernel.
    col = data.columns.index(data.target)
    fig, axes = plt.subplots(len(kernels), 2, figsize=(13, 2.4 * len(kernels)), squeeze=False)
    for row, kernel in zip(axes, kernels):
        seasonal, trend = SeriesDecomposition(kernel)(values)
        row[0].plot(dates, values[0, :, col], lw=0.8, color="0.5", label="input")
        row[0].plot(dates, trend[0, :, col], lw=1.6, color="C3", label=f"trend (k={kernel})")
        row[0].legend(loc="upper right", fontsize=8)
        row[1].plot(dates, seasonal[0, :, col], lw=0.8, color="C0", label="seasonal")
        row[1].axhline(0, color="0.7", lw=0.5)
        row[1].legend(loc="upper right", fontsize=8)
        row[0].set_ylabel(f"k = {kernel}")
    axes[0, 0].set_title(f"{data.target}: input and trend (moving average)")
    axes[0, 1].set_title(f"{data.target}: seasonal = input - trend")
    fig.autofmt_xdate()
    fig.tight_layout()
    path = out_dir / f"decomposition_{data.target}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    # Figure 2: every channel at the default kernel.
    seasonal, trend = SeriesDecomposition(default_kernel)(values)
    n = len(data.columns)
    fig, axes = plt.subplots(n, 2, figsize=(13, 1.7 * n), squeeze=False, sharex=True)
    for c, row in enumerate(axes):
        row[0].plot(dates, values[0, :, c], lw=0.7, color="0.5")
        row[0].plot(dates, trend[0, :, c], lw=1.4, color="C3")
        row[1].plot(dates, seasonal[0, :, c], lw=0.7, color="C0")
        row[1].axhline(0, color="0.7", lw=0.5)
        row[0].set_ylabel(data.columns[c])
    axes[0, 0].set_title(f"input (grey) and trend (red), k = {default_kernel}")
    axes[0, 1].set_title("seasonal")
    fig.autofmt_xdate()
    fig.tight_layout()
    path = out_dir / "decomposition_channels.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


def plot_losses(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in log]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["train_loss"] for r in log], "o-", label="train MSE")
    ax.plot(epochs, [r["val_mse"] for r in log], "o-", label="validation MSE")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (normalised)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_test_window(x, true, pred, seasonal, trend, channel: int, name: str, index: int,
                     path: Path) -> None:  # fmt: skip
    """One test window of one channel: input, truth and forecast on top; the forecast's final
    seasonal and trend parts (forecast = seasonal + trend) below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seq_len, horizon = x.shape[0], true.shape[0]
    past, future = np.arange(-seq_len, 0), np.arange(horizon)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.plot(past, x[:, channel], color="0.4", label="input")
    top.plot(future, true[:, channel], color="k", label="truth")
    top.plot(future, pred[:, channel], color="C3", label="forecast")
    top.axvline(0, color="0.7", lw=0.5)
    top.set_title(f"test window {index}, {name} (normalised)")
    top.legend(loc="upper left", fontsize=8)
    bottom.plot(future, trend[:, channel], color="C2", label="trend part")
    bottom.plot(future, seasonal[:, channel], color="C0", label="seasonal part")
    bottom.plot(future, pred[:, channel], color="C3", lw=0.8, ls="--", label="sum = forecast")
    bottom.axhline(0, color="0.7", lw=0.5)
    bottom.set_xlabel("step (0 = first forecast step)")
    bottom.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train_epoch(model, optimizer, windows, out_channels, label_len, args, device, epoch,
                autocast_dtype: torch.dtype | None = None) -> dict:  # fmt: skip
    """One pass over the shuffled training windows; returns the mean loss and timings.
    autocast_dtype (e.g. torch.bfloat16) runs the forward pass under autocast."""
    model.train()
    x, y, x_mark, y_mark = windows
    n = len(x)
    order = torch.randperm(n)
    n_steps = math.ceil(n / args.batch_size)
    if args.max_steps_per_epoch:
        n_steps = min(n_steps, args.max_steps_per_epoch)
    interactive = sys.stderr.isatty()
    bar = tqdm(range(n_steps), desc=f"epoch {epoch}", disable=not interactive, leave=False)
    total, t0 = 0.0, time.perf_counter()
    for step in bar:
        idx = order[step * args.batch_size : (step + 1) * args.batch_size]
        xb, x_mb, y_mb = x[idx].to(device), x_mark[idx].to(device), y_mark[idx].to(device)
        target = y[idx][:, label_len:, out_channels].to(device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):  # fmt: skip
            pred = model(xb, x_mb, y_mb)[..., out_channels]
        loss = F.mse_loss(pred.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        if interactive:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        elif (step + 1) % args.log_every == 0 or step + 1 == n_steps:
            rate = (time.perf_counter() - t0) / (step + 1)
            print(f"epoch {epoch} step {step + 1}/{n_steps} loss {loss.item():.4f} "
                  f"({rate:.3f} s/step)", flush=True)  # fmt: skip
    return {"train_loss": total / n_steps, "train_seconds": time.perf_counter() - t0,
            "train_steps": n_steps}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    resume_state = None
    if args.resume:
        resume_state = torch.load(args.resume, map_location="cpu", weights_only=False)
        saved = resume_state["config"]
        # Continue the same run: its model/data settings win; epochs/device may change.
        for key, value in saved["args"].items():
            if key not in ("resume", "epochs", "device", "threads", "log_every", "eval_batch_size"):
                setattr(args, key, value)
        if "precision" not in saved["args"]:
            args.precision = "float32"  # saved before --precision existed
        run_dir = Path(args.resume).resolve().parent
    else:
        run_dir = Path(args.out) / Path(__file__).stem / args.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)
    if args.threads > 0:
        # On a shared CPU, fewer threads than cores avoids threads waiting on each other.
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)

    data = load_ett(args.data_root, args.data, args.features, args.target, args.seq_len, args.split)
    figures = plot_decomposition(data, args.decomp_kernels, args.moving_avg, args.plot_hours,
                                 run_dir)  # fmt: skip
    if args.decompose_only:
        print("wrote " + ", ".join(str(p) for p in figures))
        return

    splits = {name: make_windows(getattr(data, name), args.seq_len, args.label_len, args.horizon)
              for name in ("train", "val", "test")}  # fmt: skip
    out = data.out_channels
    c_in, n_marks = data.train.values.shape[1], data.train.marks.shape[1]
    model = Autoformer(c_in, n_marks, args).to(device)
    autocast_dtype = resolve_precision(args.precision, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    # The paper's code ('type1') sets lr * 0.5 ** (e - 1) after epoch e (1-based) for the next
    # epoch, so epochs 1 and 2 both run at the initial rate and every later epoch halves it.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda done: args.lr_decay ** max(0, done - 1)
    )
    n_params = sum(p.numel() for p in model.parameters())
    config = {
        "args": {k: v for k, v in vars(args).items()},
        "derived": {
            "script": Path(__file__).name, "device": str(device), "torch": torch.__version__,
            "n_params": n_params, "columns": data.columns, "out_channels": out,
            "freq": data.freq, "borders": data.borders,
            "windows": {k: len(v[0]) for k, v in splits.items()},
            "top_k": {"encoder": top_k_for(args.seq_len, args.factor),
                      "decoder": top_k_for(args.label_len + args.horizon, args.factor)},
            "threads": torch.get_num_threads(),
            "autocast_dtype": str(autocast_dtype).replace("torch.", "") if autocast_dtype
            else None,
        },
    }  # fmt: skip
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
    print(f"run {run_dir}: {args.preset} preset, d_model {args.d_model}, {n_params:,} params, "
          f"{config['derived']['windows']} windows, device {device}", flush=True)  # fmt: skip

    log: list[dict] = []
    start_epoch, best_val, best_state, bad_epochs = 1, math.inf, None, 0
    if resume_state is None:
        (run_dir / "log.jsonl").unlink(missing_ok=True)  # a fresh run in a reused folder
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        start_epoch = resume_state["epoch"] + 1
        best_val, best_state = resume_state["best_val"], resume_state["best_model"]
        bad_epochs, log = resume_state["bad_epochs"], resume_state["log"]
        random.setstate(resume_state["rng"]["python"])
        np.random.set_state(resume_state["rng"]["numpy"])
        torch.set_rng_state(resume_state["rng"]["torch"])
        print(f"resumed from {args.resume} after epoch {resume_state['epoch']}")

    stopped = bad_epochs >= args.patience
    for epoch in range(start_epoch, args.epochs + 1):
        if stopped:
            break
        lr = optimizer.param_groups[0]["lr"]
        row = {"epoch": epoch, "lr": lr}
        row.update(train_epoch(model, optimizer, splits["train"], out, args.label_len, args,
                               device, epoch, autocast_dtype))  # fmt: skip
        t0 = time.perf_counter()
        (val_pred,) = predict(model, splits["val"], device, args.eval_batch_size)
        val = score(val_pred[..., out], splits["val"][1][:, args.label_len :, out])
        row.update(val_mse=val["mse"], val_mae=val["mae"], eval_seconds=time.perf_counter() - t0)
        scheduler.step()
        # Early stopping on the validation MSE (paper's code: patience 3); keep the best weights.
        if val["mse"] < best_val:
            best_val, bad_epochs = val["mse"], 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        stopped = bad_epochs >= args.patience
        row["best_val_mse"] = best_val
        log.append(row)
        with open(run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"epoch {epoch}: train {row['train_loss']:.4f} val mse {val['mse']:.4f} "
              f"mae {val['mae']:.4f} lr {lr:.2e} ({row['train_seconds']:.1f} s train, "
              f"{row['eval_seconds']:.1f} s eval)" + (" early stop" if stopped else ""),
              flush=True)  # fmt: skip
        atomic_save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "best_val": best_val,
            "best_model": best_state, "bad_epochs": bad_epochs, "log": log, "config": config,
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                    "torch": torch.get_rng_state()},
        }, run_dir / "checkpoint.pt")  # fmt: skip

    # Test with the best validation weights (paper's code restores the early-stopping checkpoint).
    if best_state is not None:
        model.load_state_dict(best_state)
    pred, seasonal, trend = predict(model, splits["test"], device, args.eval_batch_size, True)
    true = splits["test"][1][:, args.label_len :]
    pred_out, true_out = pred[..., out], true[..., out]
    test = score(pred_out, true_out)
    np.save(run_dir / "pred.npy", pred_out.numpy())
    np.save(run_dir / "true.npy", true_out.numpy())
    train_secs = [r["train_seconds"] for r in log if r["train_steps"] == log[0]["train_steps"]]
    metrics = {
        "test_mse": test["mse"], "test_mae": test["mae"], "best_val_mse": best_val,
        "epochs_run": len(log),
        "best_epoch": min(log, key=lambda r: r["val_mse"])["epoch"] if log else None,
        "seconds_per_train_epoch": float(np.mean(train_secs)) if train_secs else None,
        "n_test_windows": len(pred_out), "preset": args.preset, "horizon": args.horizon,
        "features": args.features, "seed": args.seed, "n_params": n_params,
    }  # fmt: skip
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if log:
        plot_losses(log, run_dir / "loss_curves.png")
    index = len(pred) // 2
    channel = data.target_channel if data.target_channel in out else out[0]
    plot_test_window(splits["test"][0][index].numpy(), true[index].numpy(), pred[index].numpy(),
                     seasonal[index].numpy(), trend[index].numpy(), channel,
                     data.columns[channel], index, run_dir / "test_window.png")  # fmt: skip
    print(f"test mse {test['mse']:.4f} mae {test['mae']:.4f} over {len(pred_out)} windows; "
          f"wrote {run_dir}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
