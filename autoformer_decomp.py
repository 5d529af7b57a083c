"""Autoformer (series decomposition + Auto-Correlation) forecasting ETTh1, and the decomposition.

Paper: Wu, Xu, Wang, Long, "Autoformer: Decomposition Transformers with Auto-Correlation for
Long-Term Series Forecasting", NeurIPS 2021. The study notes cover the series decomposition
(eq. 1) and stop at Auto-Correlation (eqs. 5-6); this script implements the whole model and
trains it as the paper's code does (Adam, LR halved per epoch, early stopping), on the ETT
protocol of seq2seq_etth.py (imported). The notes have no training configuration, so there is no
--preset notes; --decompose-only draws the notes' decomposition figures.

Full run (cpu preset: 1 encoder layer, d_model 128; ETTh1, M, horizon 96; ~8 min, 1 thread):
    python autoformer_decomp.py
    python autoformer_decomp.py --preset paper --device cuda     # the paper's size
    python autoformer_decomp.py --decompose-only                 # decomposition figures only
Quick run (seconds):
    python autoformer_decomp.py --epochs 1 --max-steps-per-epoch 5 --d-model 16 --d-ff 32

Writes outputs/autoformer_decomp/<run-name>/: config.json, metrics.json, log.jsonl,
checkpoint.pt, pred.npy / true.npy (test windows x horizon x scored channels, normalised),
loss_curves.png, test_window.png (a forecast with its trend and seasonal parts),
decomposition_<target>.png and decomposition_channels.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import seq2seq_etth
from seq2seq_etth import ETT_NAMES, ETTData, load_ett, make_windows

# ==================================================================== common block: begin
# Identical in every script of the collection (tests/test_common_block.py checks it).
# Contract: usage mistakes exit 2, data/runtime failures exit 1, each with one line on stderr
# naming the flag or file; a run writes only into OUT/<script>/<run-name>/, which exists only
# once the run has really started; checkpoints are atomic and name the script that wrote them.
SCRIPT = Path(__file__).stem
EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
# The run folder this process made: run_cli removes it if the run stops before a checkpoint.
NEW_RUN_DIR: list[Path] = []


class UsageError(Exception):
    """A mistake on the command line (a flag, a --resume file): exit 2."""


class RunError(Exception):
    """A data or runtime failure (a missing or malformed dataset, a diverged run): exit 1."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each flag's default shown once, after its help; flags whose default is None say in their
    own help what they fall back to."""

    def _get_help_string(self, action):
        text = action.help or ""
        hidden = action.default is None or action.default is False  # `0 in (None, False)`
        if not hidden and action.default is not argparse.SUPPRESS and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors become UsageError: one line on stderr, exit 2, no usage dump."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        raise UsageError(message)


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The flags that mean the same in every script."""
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to train; auto takes CUDA when present")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of every random number generator")
    p.add_argument("--data-root", type=Path, default=Path("data"), help="folder with the datasets")
    p.add_argument("--out", type=Path, default=Path("outputs"),
                   help="runs are written to OUT/<script>/<run-name>/")  # fmt: skip
    p.add_argument("--run-name", default=None,
                   help="name of the run folder (default: the start time, YYYYmmdd-HHMMSS)")  # fmt: skip
    p.add_argument("--resume", type=Path, default=None, metavar="CHECKPOINT",
                   help="continue the run that wrote this checkpoint.pt, in its own folder")  # fmt: skip
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run folder of the same --run-name")  # fmt: skip
    # One thread measured fastest for these models on a 2-core machine that does anything else.
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch; 0: torch's own")


def check_common_args(args: argparse.Namespace) -> None:
    if args.threads < 0:
        raise UsageError("--threads must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available here (use --device auto or cpu)")
    if args.resume is not None and args.overwrite:
        raise UsageError("--resume continues a run; it cannot be combined with --overwrite")
    if args.resume is not None and not args.resume.is_file():
        raise UsageError(f"--resume: no such file {args.resume}")
    if args.resume is not None and args.run_name is not None:
        raise UsageError("--resume continues a run in its checkpoint's folder; drop --run-name")
    name = args.run_name
    if name is not None and (not name or name in (".", "..") or "/" in name or "\\" in name):
        raise UsageError(f"--run-name {name!r}: use a plain folder name")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_run_dir(args: argparse.Namespace) -> Path:
    """The run's folder: the checkpoint's own with --resume, else OUT/<script>/<run-name>. A used
    name is refused unless --overwrite. Nothing is created here: see open_run_dir."""
    if args.resume is not None:
        return args.resume.resolve().parent
    if args.run_name is None:
        args.run_name = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.out / SCRIPT / args.run_name
    if run_dir.exists() and any(run_dir.iterdir()) and not args.overwrite:
        raise UsageError(
            f"--run-name {args.run_name}: {run_dir} already holds a run "
            "(--resume its checkpoint.pt to continue it, or --overwrite to replace it)"
        )
    return run_dir


def open_run_dir(run_dir: Path, config: dict, *, resume: bool, overwrite: bool) -> None:
    """Create the run folder once data and model are ready (so a failed start leaves none) and
    write config.json: one flat object of plain values."""
    for key, value in config.items():
        if isinstance(value, tuple):
            config[key] = value = list(value)
        if isinstance(value, Path):
            config[key] = value = str(value)
        ok = value is None or isinstance(value, (str, int, float, bool))
        ok = ok or (
            isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value)
        )
        if not ok:
            raise TypeError(f"config.json must stay flat: {key} is {type(value).__name__}")
    try:
        if overwrite and not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        if not resume:
            NEW_RUN_DIR.append(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", config)
    except OSError as exc:
        raise RunError(f"cannot write the run folder {run_dir} ({exc.strerror or exc})") from None


def write_json(path: Path, obj) -> None:
    """Atomic: readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def save_checkpoint(path: Path, state: dict, *, version: int) -> None:
    """Atomic (write, fsync, rename): a kill at any moment leaves the previous checkpoint whole.
    Records the script and its checkpoint version, every RNG state and the size of log.jsonl,
    so that --resume can drop what was logged after it."""
    tmp, log = path.with_name(path.name + ".tmp"), path.with_name("log.jsonl")
    log_bytes = log.stat().st_size if log.is_file() else 0
    meta = {"script": SCRIPT, "version": version, "rng": rng_state(), "log_bytes": log_bytes}
    with open(tmp, "wb") as f:
        torch.save({**meta, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, *, version: int, flag: str = "--resume") -> dict:
    """A checkpoint of this script and version, or a UsageError naming the file. With --resume,
    log.jsonl beside it is cut back to its size at that checkpoint: the run replays the rest and
    logs it again."""
    if not Path(path).is_file():
        raise UsageError(f"{flag}: no such file {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torn, truncated or not a torch file at all
        raise UsageError(
            f"{flag}: {path} is not a readable checkpoint ({type(exc).__name__})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("script") != SCRIPT:
        writer = ckpt.get("script") if isinstance(ckpt, dict) else None
        raise UsageError(
            f"{flag}: {path} was written by {writer or 'something else'}, not {SCRIPT}"
        )
    if ckpt.get("version") != version:
        raise UsageError(
            f"{flag}: {path} has checkpoint version {ckpt.get('version')}; "
            f"this {SCRIPT}.py reads version {version}"
        )
    log, keep = Path(path).with_name("log.jsonl"), ckpt.get("log_bytes")
    if flag == "--resume" and keep is not None and log.is_file() and log.stat().st_size > keep:
        os.truncate(log, keep)
    return ckpt


def require_files(root: Path, files: list[str], how: str) -> None:
    """RunError naming the first missing dataset file and how to get it. Explains the common
    trap: `ln -s /somewhere/MNIST data/MNIST` into an existing folder makes data/MNIST/MNIST."""
    for rel in files:
        path = root / rel
        if path.is_file():
            continue
        top = root / Path(rel).parts[0]
        nested = top / Path(rel).parts[0]
        if nested.exists():
            raise RunError(
                f"{path} is missing but {nested} exists: the link was made inside an existing "
                f"folder; remove {top} and link again"
            )
        raise RunError(f"{path} is missing; {how}")


def remove_empty_dirs(path: Path, stop: Path) -> None:
    """Undo the folders a failed download made, up to (not including) `stop`."""
    path, stop = path.resolve(), stop.resolve()
    while path != stop and stop in path.parents and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent


class Progress:
    """tqdm on a terminal; elsewhere (cron, logs, CI) a plain line at most every `every_s`."""

    def __init__(self, total: int, initial: int = 0, desc: str = SCRIPT, every_s: float = 30.0):
        self.total, self.n, self.desc, self.every_s = total, initial, desc, every_s
        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=desc) if self.tty else None
        self.last_print = time.monotonic()

    def update(self, n: int = 1, msg: str = "") -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            if msg:
                self.bar.set_postfix_str(msg, refresh=False)
        elif time.monotonic() - self.last_print >= self.every_s or self.n >= self.total:
            self.last_print = time.monotonic()
            print(f"{self.desc} {self.n}/{self.total} {msg}".rstrip(), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_cli(main, argv: list[str] | None = None) -> int:
    """main(argv) with the exit-code contract: 0 done, 1 RunError, 2 UsageError, 130 Ctrl-C. A
    run stopped before its first checkpoint leaves no folder behind."""
    try:
        main(argv)
    except UsageError as exc:
        print(f"{SCRIPT}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RunError, KeyboardInterrupt) as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        message = "interrupted" if interrupted else f"error: {exc}"
        for run_dir in NEW_RUN_DIR:
            if not (run_dir / "checkpoint.pt").is_file():
                shutil.rmtree(run_dir, ignore_errors=True)
            elif interrupted:
                message += f"; continue with --resume {run_dir / 'checkpoint.pt'}"
        print(f"{SCRIPT}: {message}", file=sys.stderr)
        return EXIT_INTERRUPTED if interrupted else EXIT_RUNTIME
    return 0


# ==================================================================== common block: end

# -------------------------------------------------------------------------------------- config
CHECKPOINT_VERSION = 2
# paper: Sec. 4 and the code's ETTh1 script. cpu (default): the paper's layout at d_model 128
# with ONE encoder layer, chosen on validation MSE (docs/autoformer_decomp.md): on ETTh1's 8,449
# training windows two encoder layers over-fit after an epoch or two.
PRESETS = {
    "paper": dict(d_model=512, e_layers=2, d_ff=2048, dropout=0.05, factor=3.0, moving_avg=25),
    "cpu": dict(d_model=128, e_layers=1, d_ff=512, dropout=0.05, factor=3.0, moving_avg=25),
}
D_LAYERS = 1  # decoder layers: one in every experiment of the paper and in both presets
LABEL_LEN, PATIENCE, EVAL_BATCH = 48, 3, 256
DECOMP_KERNELS, PLOT_HOURS = (5, 25, 49, 97), 24 * 21  # the decomposition figures


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                   help="model size; the size flags below override it")  # fmt: skip
    p.add_argument("--data", default="ETTh1", help=f"{', '.join(ETT_NAMES)} or a CSV path")
    p.add_argument("--features", choices=("M", "S", "MS"), default="M",
                   help="M: all channels in and out; S: target only; MS: all in, target out")  # fmt: skip
    p.add_argument("--target", default="OT", help="the target column (S, MS)")
    p.add_argument("--seq-len", type=int, default=96, help="input length L")
    p.add_argument("--horizon", type=int, default=96, help="forecast length (paper: 96-720)")
    size = "(preset: cpu %s, paper %s)"
    p.add_argument("--d-model", type=int, help="model width " + size % (128, 512))
    p.add_argument("--e-layers", type=int, help="encoder layers " + size % (1, 2))
    p.add_argument("--d-ff", type=int, help="feed-forward width " + size % (512, 2048))
    p.add_argument("--dropout", type=float, help="dropout " + size % (0.05, 0.05))
    p.add_argument("--factor", type=float, help="c in top k = floor(c ln L) " + size % (3, 3))
    p.add_argument("--moving-avg", type=int, help="decomposition kernel " + size % (25, 25))
    p.add_argument("--epochs", type=int, default=10, help="most epochs (early stopping)")
    p.add_argument("--batch-size", type=int, default=32, help="windows per step")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam LR; halved per epoch from epoch 3")
    p.add_argument("--max-steps-per-epoch", type=int, default=0,
                   help="cap on training steps per epoch, 0 = all (for seconds-long runs)")  # fmt: skip
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="training matmuls under bf16 autocast (FFTs, loss, weights and every "
                   "evaluation stay float32); auto: bf16 where the hardware has it natively")  # fmt: skip
    p.add_argument("--decompose-only", action="store_true",
                   help="write the decomposition figures and exit")  # fmt: skip
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    check_common_args(args)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("epochs", "seq_len", "horizon", "d_model", "e_layers", "d_ff", "moving_avg",
                "batch_size"):  # fmt: skip
        if getattr(args, key) < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.seq_len < LABEL_LEN:
        raise UsageError(f"--seq-len must be >= the decoder's {LABEL_LEN} known steps")
    if not 0 <= args.dropout < 1 or args.factor <= 0 or args.lr <= 0:
        raise UsageError("--dropout must be in [0, 1), --factor and --lr > 0")
    if args.max_steps_per_epoch < 0:
        raise UsageError("--max-steps-per-epoch must be >= 0")
    return args


def resolve_precision(choice: str, device: torch.device) -> torch.dtype | None:
    """--precision -> the training autocast dtype (None: float32). Emulated bf16 is slower than
    float32, so auto picks it only on CUDA with bf16 or CPUs with AVX512-BF16 / AMX."""
    if choice != "auto":
        return torch.bfloat16 if choice == "bfloat16" else None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.is_file() else ""
    return torch.bfloat16 if "avx512_bf16" in flags or "amx_bf16" in flags else None


# ------------------------------------------------------------- series decomposition (eq. 1)
class SeriesDecomposition(nn.Module):
    """eq. 1: X_t = AvgPool(Padding(X)), X_s = X - X_t, for x [B, L, C]; returns (X_s, X_t).
    Padding repeats the first and last values, so the trend does not sag to 0 at the ends; the
    back gets the odd step, so an even kernel keeps the length too (the paper's code loses one)."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        front = (self.kernel_size - 1) // 2
        back = self.kernel_size - 1 - front
        padded = torch.cat([x[:, :1].expand(-1, front, -1), x, x[:, -1:].expand(-1, back, -1)], 1)
        trend = F.avg_pool1d(padded.transpose(1, 2), self.kernel_size, stride=1).transpose(1, 2)
        return x - trend, trend


# ----------------------------------------------------------------- Auto-Correlation (eqs. 5-6)
def mean_autocorrelation(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """eq. 5, R(tau) = sum_t q[t + tau] k[t] (circular) = IFFT(FFT(q) * conj(FFT(k)))[tau]
    (Wiener-Khinchin), averaged over the channels: q, k [B, L, D] -> [B, L]. The inverse FFT is
    linear, so the spectra are averaged first: one inverse FFT instead of D."""
    if q.dtype in (torch.bfloat16, torch.float16):
        q, k = q.float(), k.float()  # bf16 sums would blur the small gaps between delays
    cross = torch.fft.rfft(q, dim=1) * torch.conj(torch.fft.rfft(k, dim=1))
    return torch.fft.irfft(cross.mean(-1), n=q.shape[1], dim=1)


def select_delays(corr: torch.Tensor, top_k: int, batch_shared: bool):
    """The top_k delays of corr [B, L] and their softmax weights (eq. 6), both [B, k].
    Training (batch_shared, as the paper's code): delays from the batch-mean correlation, each
    sample weighted by its own correlations there. Inference: every sample picks its own, so a
    window's forecast does not depend on the other windows in its batch."""
    if batch_shared:
        delays = corr.mean(0).topk(top_k).indices.expand(corr.shape[0], -1)
        weights = corr.gather(1, delays)
    else:
        weights, delays = corr.topk(top_k, dim=1)
    return torch.softmax(weights, dim=1), delays


def time_delay_aggregation(values: torch.Tensor, weights: torch.Tensor, delays: torch.Tensor):
    """eq. 6: sum_i w_i Roll(V, tau_i), Roll(V, tau)[t] = V[(t + tau) mod L], for values
    [B, L, D] and weights/delays [B, k]. The k weighted shifts are scattered into one [L, L]
    matrix per sample, A[t, (t + tau_i) mod L] += w_i, applied with one batched matmul: no
    loop over samples or delays, and gradients reach the weights through the scatter."""
    length = values.shape[1]
    steps = torch.arange(length, device=values.device)
    columns = (steps[:, None] + delays[:, None, :]) % length  # [B, L, k]
    src = weights[:, None, :].expand(columns.shape).to(values.dtype)
    shift = values.new_zeros(values.shape[0], length, length).scatter_add(2, columns, src)
    return shift @ values


def top_k_for(length: int, factor: float) -> int:
    """k = floor(c ln L) (Sec. 3.2), at least 1 and at most L."""
    return max(1, min(length, int(factor * math.log(length))))


class AutoCorrelation(nn.Module):
    """Multi-head Auto-Correlation as the paper's code computes it: the correlation is averaged
    over every head and channel, so all heads share the delays and the head split drops out
    (any d_model gives the numbers of the paper's 8 heads when 8 divides it)."""

    def __init__(self, d_model: int, factor: float):
        super().__init__()
        self.factor = factor
        self.query, self.key = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.value, self.out = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        length = queries.shape[1]
        q, k, v = self.query(queries), self.key(keys), self.value(values)
        # Shorter keys/values (cross-correlation: 96 encoder steps against 144 decoder steps)
        # are zero-padded at the end; longer ones are cut to the query length.
        if k.shape[1] < length:
            k = F.pad(k, (0, 0, 0, length - k.shape[1]))
            v = F.pad(v, (0, 0, 0, length - v.shape[1]))
        k, v = k[:, :length], v[:, :length]
        corr = mean_autocorrelation(q, k)  # eq. 5
        weights, delays = select_delays(corr, top_k_for(length, self.factor), self.training)
        return self.out(time_delay_aggregation(v, weights, delays))  # eq. 6


# ---------------------------------------------- model (Sec. 3.1: embedding, eq. 3, eq. 4)
class DataEmbedding(nn.Module):
    """A width-3 circular convolution over time plus the timeF calendar features through a
    linear layer; no positional embedding: Auto-Correlation compares a series with shifted
    copies of itself, so absolute positions carry nothing it needs."""

    def __init__(self, c_in: int, n_marks: int, d_model: int, dropout: float):
        super().__init__()
        self.token = nn.Conv1d(c_in, d_model, 3, padding=1, padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.token.weight, mode="fan_in", nonlinearity="leaky_relu")
        self.time = nn.Linear(n_marks, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.token(x.transpose(1, 2)).transpose(1, 2) + self.time(marks))


class SeasonalLayerNorm(nn.Module):
    """LayerNorm over channels, then the time mean removed: the seasonal part has no level."""

    def __init__(self, d_model: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return x - x.mean(dim=1, keepdim=True)


def feed_forward(d_model: int, d_ff: int, dropout: float) -> nn.Sequential:
    # Pointwise layers without bias, as the paper's code (1x1 convolutions there).
    return nn.Sequential(nn.Linear(d_model, d_ff, bias=False), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(d_ff, d_model, bias=False), nn.Dropout(dropout))  # fmt: skip


class EncoderLayer(nn.Module):
    """eq. 3: S1 = Decomp(AutoCorr(X) + X), S2 = Decomp(FeedForward(S1) + S1); the trends are
    dropped: the encoder models the seasonal part only."""

    def __init__(self, d_model, d_ff, dropout, factor, moving_avg):
        super().__init__()
        self.attention = AutoCorrelation(d_model, factor)
        self.feed_forward = feed_forward(d_model, d_ff, dropout)
        self.decomp = SeriesDecomposition(moving_avg)  # no weights: one module serves both
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.decomp(x + self.dropout(self.attention(x, x, x)))
        x, _ = self.decomp(x + self.feed_forward(x))
        return x


class DecoderLayer(nn.Module):
    """eq. 4: self Auto-Correlation, cross Auto-Correlation with the encoder output and the
    feed-forward, each followed by a decomposition; the three trends are summed and projected
    to the output channels (W_l in eq. 4) for the accumulated trend."""

    def __init__(self, d_model, d_ff, dropout, factor, moving_avg, c_out):
        super().__init__()
        self.self_attention = AutoCorrelation(d_model, factor)
        self.cross_attention = AutoCorrelation(d_model, factor)
        self.feed_forward = feed_forward(d_model, d_ff, dropout)
        self.decomp = SeriesDecomposition(moving_avg)
        self.dropout = nn.Dropout(dropout)
        self.trend_projection = nn.Conv1d(d_model, c_out, 3, padding=1, padding_mode="circular",
                                          bias=False)  # fmt: skip

    def forward(self, x: torch.Tensor, cross: torch.Tensor):
        x, trend1 = self.decomp(x + self.dropout(self.self_attention(x, x, x)))
        x, trend2 = self.decomp(x + self.dropout(self.cross_attention(x, cross, cross)))
        x, trend3 = self.decomp(x + self.feed_forward(x))
        trend = self.trend_projection((trend1 + trend2 + trend3).transpose(1, 2)).transpose(1, 2)
        return x, trend


class Autoformer(nn.Module):
    def __init__(self, c_in: int, n_marks: int, args):
        super().__init__()
        self.horizon = args.horizon
        layer = dict(d_model=args.d_model, d_ff=args.d_ff, dropout=args.dropout,
                     factor=args.factor, moving_avg=args.moving_avg)  # fmt: skip
        self.decomp = SeriesDecomposition(args.moving_avg)
        self.enc_embedding = DataEmbedding(c_in, n_marks, args.d_model, args.dropout)
        self.dec_embedding = DataEmbedding(c_in, n_marks, args.d_model, args.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(**layer) for _ in range(args.e_layers))
        self.encoder_norm = SeasonalLayerNorm(args.d_model)
        self.decoder = nn.ModuleList(DecoderLayer(**layer, c_out=c_in) for _ in range(D_LAYERS))
        self.decoder_norm = SeasonalLayerNorm(args.d_model)
        self.seasonal_projection = nn.Linear(args.d_model, c_in)

    def forward(self, x, x_mark, y_mark, components: bool = False):
        """x [B, L, C], x_mark [B, L, F], y_mark [B, 48 + H, F] -> forecast [B, H, C] (and,
        with components, its final seasonal and trend parts)."""
        # Decoder input (Sec. 3.1): the last 48 steps of the input's seasonal and trend parts,
        # then H placeholders: zeros for the seasonal, the input mean for the trend.
        seasonal, trend = self.decomp(x)
        mean = x.mean(dim=1, keepdim=True).expand(-1, self.horizon, -1)
        seasonal = torch.cat([seasonal[:, -LABEL_LEN:], torch.zeros_like(mean)], dim=1)
        trend = torch.cat([trend[:, -LABEL_LEN:], mean], dim=1)
        enc = self.enc_embedding(x, x_mark)
        for layer in self.encoder:  # eq. 3
            enc = layer(enc)
        enc = self.encoder_norm(enc)
        dec = self.dec_embedding(seasonal, y_mark)
        for layer in self.decoder:  # eq. 4: T^l = T^{l-1} + sum_i W_{l,i} T^{l,i}
            dec, trend_part = layer(dec, enc)
            trend = trend + trend_part
        seasonal = self.seasonal_projection(self.decoder_norm(dec))
        forecast = (seasonal + trend)[:, -self.horizon :]  # W_S X_de^M + T_de^M
        if components:
            return forecast, seasonal[:, -self.horizon :], trend[:, -self.horizon :]
        return forecast


# ------------------------------------------------------------------------ evaluation and figures
@torch.no_grad()
def predict(model, windows, device) -> torch.Tensor:
    """Forecasts of every window in eval mode (per-sample delays), a CPU tensor [N, H, C]."""
    model.eval()
    x, _, x_mark, y_mark = windows
    parts = []
    for i in range(0, len(x), EVAL_BATCH):
        b = slice(i, i + EVAL_BATCH)
        parts.append(model(x[b].to(device), x_mark[b].to(device), y_mark[b].to(device)).float())
    return torch.cat(parts).cpu()


def score(pred: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    diff = pred.double() - true.double()
    return {"mse": float((diff**2).mean()), "mae": float(diff.abs().mean())}


def plot_decomposition(data: ETTData, kernel: int, out_dir: Path) -> None:
    """Input, trend and seasonal part of the first three weeks of the test period, in original
    units: the target for several kernels, then every channel at the model's kernel."""
    import matplotlib.pyplot as plt

    lo = data.borders["val"][1]  # first row of the test period proper
    frame = data.raw.iloc[lo : lo + PLOT_HOURS]
    dates = frame["date"].to_numpy()
    values = torch.tensor(frame[data.columns].to_numpy(np.float64))[None]  # [1, T, C]
    unit = lambda c: f"{data.columns[c]} ({'°C' if data.columns[c] == 'OT' else 'file units'})"
    col = data.columns.index(data.target)
    figures = {  # file: (rows of (channel, kernel), left title, right title)
        f"decomposition_{data.target}.png": (
            [(col, k) for k in DECOMP_KERNELS],
            f"{data.target}: input and trend (moving average of k hours)",
            f"{data.target}: seasonal = input - trend"),
        "decomposition_channels.png": (
            [(c, kernel) for c in range(len(data.columns))],
            f"every channel: input and trend, k = {kernel} hours", "seasonal = input - trend"),
    }  # fmt: skip
    for name, (rows, left, right) in figures.items():
        fig, axes = plt.subplots(len(rows), 2, figsize=(13, 2.2 * len(rows)), squeeze=False,
                                 sharex=True)  # fmt: skip
        for (c, k), row in zip(rows, axes):
            seasonal, trend = SeriesDecomposition(k)(values)
            row[0].plot(dates, values[0, :, c], lw=0.8, color="0.5", label="input")
            row[0].plot(dates, trend[0, :, c], lw=1.6, color="C3", label=f"trend (k = {k})")
            row[1].plot(dates, seasonal[0, :, c], lw=0.8, color="C0", label=f"seasonal (k = {k})")
            for ax in row:
                ax.set_ylabel(unit(c))
                ax.legend(loc="upper right", fontsize=8)
        axes[0, 0].set_title(left)
        axes[0, 1].set_title(right)
        for ax in axes[-1]:
            ax.set_xlabel("date")
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)


def plot_losses(log: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in log]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["train_loss"] for r in log], "o-", label="train")
    ax.plot(epochs, [r["val_mse"] for r in log], "s-", label="validation")
    ax.set(xlabel="epoch", ylabel="MSE (normalised units²)", title="autoformer_decomp: loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def plot_test_window(model, windows, index: int, channel: int, name: str, device, path: Path):
    """One test window of one channel: input, truth and forecast on top; the forecast's final
    seasonal and trend parts (forecast = seasonal + trend) below."""
    import matplotlib.pyplot as plt

    x, y, x_mark, y_mark = (w[index : index + 1].to(device) for w in windows)
    parts = model.eval()(x, x_mark, y_mark, components=True)
    pred, seasonal, trend = (part[0, :, channel].float().cpu().numpy() for part in parts)
    x, true = x[0, :, channel].cpu().numpy(), y[0, LABEL_LEN:, channel].cpu().numpy()
    past, future = np.arange(-len(x), 0), np.arange(len(true))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.plot(past, x, color="0.4", label="input")
    top.plot(future, true, color="k", label="truth")
    top.plot(future, pred, color="C3", label="forecast")
    top.set(title=f"test window {index}, {name}", ylabel=f"{name} (normalised)")
    bottom.plot(future, trend, color="C2", label="trend part")
    bottom.plot(future, seasonal, color="C0", label="seasonal part")
    bottom.plot(future, pred, color="C3", lw=0.8, ls="--", label="sum = forecast")
    bottom.set(title="the forecast's decomposition", xlabel="hours after the forecast start",
               ylabel=f"{name} (normalised)")  # fmt: skip
    for ax in (top, bottom):
        ax.axvline(0, color="0.7", lw=0.5)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------- train
def train_epoch(model, optimizer, windows, out, args, device, epoch, autocast_dtype) -> dict:
    """One pass over the windows in a global-RNG order (restored from the checkpoint)."""
    model.train()
    x, y, x_mark, y_mark = windows
    order = torch.randperm(len(x))
    n_steps = math.ceil(len(x) / args.batch_size)
    if args.max_steps_per_epoch:
        n_steps = min(n_steps, args.max_steps_per_epoch)
    total, t0 = 0.0, time.perf_counter()
    progress = Progress(n_steps, desc=f"epoch {epoch}")
    for step in range(n_steps):
        idx = order[step * args.batch_size : (step + 1) * args.batch_size]
        target = y[idx][:, LABEL_LEN:, out].to(device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):  # fmt: skip
            pred = model(x[idx].to(device), x_mark[idx].to(device), y_mark[idx].to(device))
        loss = F.mse_loss(pred[..., out].float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        progress.update(1, f"loss {loss.item():.4f}")
    progress.close()
    return {"train_loss": total / n_steps, "train_seconds": time.perf_counter() - t0,
            "train_steps": n_steps}  # fmt: skip


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ckpt = None
    if args.resume is not None:  # the run's own settings win; only where it runs may change
        ckpt = load_checkpoint(args.resume, version=CHECKPOINT_VERSION)
        keep = {k: getattr(args, k) for k in ("device", "threads", "resume")}
        vars(args).update({**ckpt["args"], **keep})
    run_dir = resolve_run_dir(args)
    set_threads(args.threads)
    device = pick_device(args.device)
    seed_everything(args.seed)
    try:
        data = load_ett(args.data_root, args.data, args.features, args.target, args.seq_len)
        splits = {name: make_windows(getattr(data, name), args.seq_len, LABEL_LEN, args.horizon)
                  for name in ("train", "val", "test")}  # fmt: skip
    except seq2seq_etth.RunError as exc:  # the loader's errors are this script's errors too
        raise RunError(str(exc)) from None
    out = data.out_channels
    model = Autoformer(len(data.columns), data.train.marks.shape[1], args).to(device)
    autocast_dtype = resolve_precision(args.precision, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    # The paper's code: after epoch e the LR becomes lr * 0.5^(e-1), so epochs 1 and 2 both
    # run at lr and each later epoch halves it.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: 0.5 ** max(0, done - 1))
    n_params = sum(p.numel() for p in model.parameters())
    config = {k: v for k, v in vars(args).items() if k != "resume"}
    config.update(columns=data.columns, out_channels=out, freq=data.freq, n_params=n_params,
                  device_used=str(device), label_len=LABEL_LEN, d_layers=D_LAYERS,
                  autocast=str(autocast_dtype).replace("torch.", "") if autocast_dtype else "none",
                  **{f"{k}_rows": list(v) for k, v in data.borders.items()})  # fmt: skip
    open_run_dir(run_dir, config, resume=ckpt is not None, overwrite=args.overwrite)
    plot_decomposition(data, args.moving_avg, run_dir)
    if args.decompose_only:
        print(f"wrote the decomposition figures to {run_dir}")
        return

    state = {"epoch": 0, "best_val": math.inf, "best_epoch": 0, "bad_epochs": 0, "log": []}
    best_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        best_model, state = ckpt["best_model"], ckpt["state"]
        print(f"resuming {run_dir} after epoch {state['epoch']}", flush=True)
    print(f"run {run_dir}: {args.preset} preset, d_model {args.d_model}, {n_params:,} "
          f"parameters, {len(splits['train'][0])} training windows, {device}, autocast "
          f"{config['autocast']}", flush=True)  # fmt: skip

    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        if state["bad_epochs"] >= PATIENCE:
            break
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        row.update(train_epoch(model, optimizer, splits["train"], out, args, device, epoch,
                               autocast_dtype))  # fmt: skip
        t0 = time.perf_counter()
        val_pred = predict(model, splits["val"], device)
        val = score(val_pred[..., out], splits["val"][1][:, LABEL_LEN:, out])
        row.update(val_mse=val["mse"], val_mae=val["mae"], eval_seconds=time.perf_counter() - t0)
        scheduler.step()
        if val["mse"] < state["best_val"]:  # early stopping keeps the best validation weights
            state.update(best_val=val["mse"], best_epoch=epoch, bad_epochs=0)
            best_model = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            state["bad_epochs"] += 1
        row["best_val_mse"] = state["best_val"]
        state["log"].append(row)
        state["epoch"] = epoch
        append_jsonl(run_dir / "log.jsonl", row)
        print(f"epoch {epoch}: train {row['train_loss']:.4f} val MSE {val['mse']:.4f} MAE "
              f"{val['mae']:.4f} lr {row['lr']:.2e} ({row['train_seconds']:.0f} s train, "
              f"{row['eval_seconds']:.0f} s eval)", flush=True)  # fmt: skip
        save_checkpoint(run_dir / "checkpoint.pt", {
            "args": config, "model": model.state_dict(), "best_model": best_model,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "state": state,
        }, version=CHECKPOINT_VERSION)  # fmt: skip
    if state["bad_epochs"] >= PATIENCE:
        print(f"early stop: no better validation MSE for {PATIENCE} epochs", flush=True)

    model.load_state_dict(best_model)
    pred = predict(model, splits["test"], device)
    true = splits["test"][1][:, LABEL_LEN:]
    test = score(pred[..., out], true[..., out])
    np.save(run_dir / "pred.npy", pred[..., out].numpy())
    np.save(run_dir / "true.npy", true[..., out].numpy())
    steps = state["log"][0]["train_steps"]  # seconds per epoch: the full-length epochs only
    full = [r["train_seconds"] for r in state["log"] if r["train_steps"] == steps]
    metrics = {"test_mse": test["mse"], "test_mae": test["mae"], "best_val_mse": state["best_val"],
               "best_epoch": state["best_epoch"], "epochs_run": len(state["log"]),
               "seconds_per_epoch": float(np.mean(full)) if full else None,
               "n_test_windows": len(pred), "n_params": n_params}  # fmt: skip
    write_json(run_dir / "metrics.json", metrics)
    plot_losses(state["log"], run_dir / "loss_curves.png")
    c = data.target_channel if data.target_channel in out else out[0]
    plot_test_window(model, splits["test"], len(pred) // 2, c, data.columns[c], device,
                     run_dir / "test_window.png")  # fmt: skip
    print(f"test MSE {test['mse']:.4f} MAE {test['mae']:.4f} over {len(pred)} windows; "
          f"wrote {run_dir}", flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(run_cli(main))
