"""A 1-D GAN that turns uniform noise into Normal(4, 1.25), with a discriminator that judges
whole minibatches (devnag's 2018 design as the study notes adapt it, rewritten for current
PyTorch).

G maps u ~ U(0, 1) through 1 -> 5 -> 5 -> 1 (tanh). D never sees a single value but a minibatch
of 500 after one of five preprocessings (`--mode`: raw, diffs, variances, moments, quantiles;
moments is the notes' choice and the default), then features -> 10 -> 10 -> 1 with sigmoid
units. Each epoch is 20 D steps then 20 G steps (Algorithm 1, k = 20) of SGD with momentum 0.9.

The default recipe (`--preset ours`) changes four things in the notes' (`--preset notes`), each
measured in docs/gan_1d_normal.md: D sees the data standardised by the real data's mean and std,
so that no feature sits at |4| and saturates D's sigmoid units; 4x the learning rate, falling
linearly to 0; an R1 penalty on D; and a moving average of G's weights is evaluated.

Papers: Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014 (Eq. 1, the
non-saturating G loss of Sec. 3, Algorithm 1); Mescheder, Geiger and Nowozin, "Which Training
Methods for GANs do actually Converge?", ICML 2018 (R1, Eq. 9); Yazici et al., "The Unusual
Effectiveness of Averaging in GAN Training", ICLR 2019 (the moving average of G).

Full run (5000 epochs; 7-13 minutes with one thread on a busy shared 2-core machine):
    python gan_1d_normal.py                        # moments mode
    python gan_1d_normal.py --mode quantiles       # the shape right too
    python gan_1d_normal.py --preset notes         # the notes' recipe
Quick run (seconds):
    python gan_1d_normal.py --epochs 50 --run-name quick

Writes outputs/gan_1d_normal/<run-name>/: config.json, metrics.json (moments, KS and
1-Wasserstein distance to the target from 10,000 samples, whether the moments are within
MOMENT_TOLERANCE, D's health at the end), log.jsonl, histograms.png, moments.png,
input_distribution.png, samples.npy (10,000 generated values) and checkpoint.pt.
"""

from __future__ import annotations

import argparse
import copy
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
import torch.nn as nn
import torch.nn.functional as F
from scipy import special, stats
from tqdm import tqdm

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

# ----------------------------------------------------------------------------- config
CHECKPOINT_VERSION = 2
MODES = ("raw", "diffs", "variances", "moments", "quantiles")
MEAN, STD = 4.0, 1.25  # the target Normal, as in the notes
G_HIDDEN, D_HIDDEN, MOMENTUM = 5, 10, 0.9  # devnag's sizes and SGD momentum, as in the notes
EVAL_SAMPLES, SNAPSHOTS, LOG_EVERY, CHECKPOINT_EVERY = 10_000, 8, 100, 1000
# The moments target: |mean - 4|, |std - 1.25|, |skewness|, |excess kurtosis| at most these.
MOMENT_TOLERANCE = {"mean": 0.05, "std": 0.05, "skewness": 0.15, "excess_kurtosis": 0.3}
# ours: the best measured recipe (docs/gan_1d_normal.md); notes: devnag's setting as the notes
# use it. `standardise`: D sees (x - m) / s with m, s the mean and std of a real sample.
PRESETS = {
    "ours": {"lr_d": 4e-3, "lr_g": 4e-3, "lr_decay": "linear", "ema": 0.99, "r1_gamma": 1.0,
             "standardise": True},
    "notes": {"lr_d": 1e-3, "lr_g": 1e-3, "lr_decay": "none", "ema": 0.0, "r1_gamma": 0.0,
              "standardise": False},
}  # fmt: skip
TRAINING_FLAGS = ("mode", "preset", "epochs", "d_steps", "g_steps", "batch_size", "lr_d", "lr_g",
                  "lr_decay", "ema", "r1_gamma")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    add_common_args(p)
    p.add_argument("--mode", default="moments", choices=MODES,
                   help="what D sees of each minibatch")  # fmt: skip
    p.add_argument("--preset", default="ours", choices=sorted(PRESETS),
                   help="ours: the best measured recipe; notes: the study notes' recipe")  # fmt: skip
    p.add_argument("--epochs", type=int, default=5000,
                   help="epochs of d-steps D then g-steps G updates")  # fmt: skip
    p.add_argument("--d-steps", type=int, default=20, help="D updates per epoch")
    p.add_argument("--g-steps", type=int, default=20, help="G updates per epoch")
    p.add_argument("--batch-size", type=int, default=500, help="samples per minibatch D judges")
    p.add_argument("--lr-d", type=float, help="D's SGD learning rate (default: the preset's)")
    p.add_argument("--lr-g", type=float, help="G's SGD learning rate (default: the preset's)")
    p.add_argument("--lr-decay", choices=("none", "linear"),
                   help="linear: both rates fall to 0 at the last epoch (default: the preset's)")  # fmt: skip
    p.add_argument("--ema", type=float,
                   help="per-epoch decay of the average of G's weights that is evaluated; "
                   "0: the last G (default: the preset's)")  # fmt: skip
    p.add_argument("--r1-gamma", type=float,
                   help="R1 penalty gamma/2 ||grad D||^2 on real batches; 0: off "
                   "(default: the preset's)")  # fmt: skip
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_common_args(args)
    for name in ("epochs", "d_steps", "g_steps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if args.batch_size < 4:
        raise UsageError("--batch-size must be >= 4 (the moments need a few samples)")
    if args.resume is not None:
        given = [k for k in TRAINING_FLAGS if getattr(args, k) != parser.get_default(k)]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UsageError(f"--resume continues a run with its own settings; drop {flag}")
    for key, value in PRESETS[args.preset].items():  # every recipe flag left unset
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for name in ("lr_d", "lr_g"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0")
    if not 0 <= args.ema < 1:
        raise UsageError("--ema must be in [0, 1)")
    if args.r1_gamma < 0:
        raise UsageError("--r1-gamma must be >= 0")
    return args


# ----------------------------------------------------------------------------- data
# Real data: Normal(MEAN, STD). G's input: U(0, 1), so G must learn a non-linear map, ideally
# the inverse CDF u -> MEAN + STD * Phi^-1(u) (or of 1 - u).


def sample_real(shape, device, gen=None) -> torch.Tensor:
    return torch.randn(shape, device=device, generator=gen) * STD + MEAN


def sample_noise(shape, device, gen=None) -> torch.Tensor:
    return torch.rand(shape, device=device, generator=gen)


# ----------------------------------------------------------------------------- D's inputs
# Each maps minibatches along the LAST axis, (..., B) -> (..., features), so all D steps of an
# epoch are preprocessed in one call. All differentiable: G's gradient flows through them.
QUANTILE_BLOCKS = 20


def preprocess_moments(x: torch.Tensor) -> torch.Tensor:
    """(mean, std, skewness, excess kurtosis), population (biased) estimators."""
    std, mean = torch.std_mean(x, dim=-1, keepdim=True, correction=0)
    z = (x - mean) / std
    skewness = (z**3).mean(-1, keepdim=True)
    excess_kurtosis = (z**4).mean(-1, keepdim=True) - 3.0  # 0 for a Gaussian
    return torch.cat([mean, std, skewness, excess_kurtosis], -1)


def preprocess_quantiles(x: torch.Tensor, blocks: int = QUANTILE_BLOCKS) -> torch.Tensor:
    """(mean, std, the standardised sorted batch in `blocks` block means). The sorted batch is
    the empirical quantile function, which fixes a Normal where four moments do not (a spike
    with matching tails fools those); block means cut its sampling noise."""
    std, mean = torch.std_mean(x, dim=-1, keepdim=True, correction=0)
    z = torch.sort((x - mean) / std, dim=-1).values
    q = F.adaptive_avg_pool1d(z.reshape(-1, 1, z.shape[-1]), blocks)  # equal-count block means
    return torch.cat([mean, std, q.reshape(*z.shape[:-1], blocks)], -1)


PREPROCESS = {
    "raw": lambda x: x,
    "diffs": lambda x: torch.cat([x, x - x.mean(-1, keepdim=True)], -1),
    "variances": lambda x: torch.cat([x, (x - x.mean(-1, keepdim=True)) ** 2], -1),
    "moments": preprocess_moments,
    "quantiles": preprocess_quantiles,
}


def d_input_size(mode: str, batch_size: int) -> int:
    return {"raw": batch_size, "diffs": 2 * batch_size, "variances": 2 * batch_size,
            "moments": 4, "quantiles": QUANTILE_BLOCKS + 2}[mode]  # fmt: skip


# ----------------------------------------------------------------------------- models


def mlp(x: torch.Tensor, layers: nn.ModuleList, act) -> torch.Tensor:
    """Linear layers with `act` between them. F.linear on the weights rather than calling the
    modules: at this size the Module call machinery costs as much as the arithmetic."""
    for layer in layers[:-1]:
        x = act(F.linear(x, layer.weight, layer.bias))
    return F.linear(x, layers[-1].weight, layers[-1].bias)


class Generator(nn.Module):
    """u -> x: 1 -> 5 -> 5 -> 1, tanh, linear output; (..., B) -> (..., B)."""

    def __init__(self):
        super().__init__()
        sizes = (1, G_HIDDEN, G_HIDDEN, 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return mlp(u.unsqueeze(-1), self.layers, torch.tanh).squeeze(-1)


class Discriminator(nn.Module):
    """Minibatch -> one logit: standardise (x - m) / s (m, s from real data; 0, 1 in the notes'
    recipe), preprocess, then features -> 10 -> 10 -> 1 with sigmoid units. The final sigmoid
    lives inside the losses (softplus of the logit: the same BCE without log 0)."""

    def __init__(self, mode: str, batch_size: int, shift: float = 0.0, scale: float = 1.0):
        super().__init__()
        self.preprocess, self.shift, self.scale = PREPROCESS[mode], shift, scale
        sizes = (d_input_size(mode, batch_size), D_HIDDEN, D_HIDDEN, 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.preprocess((x - self.shift) / self.scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (..., F) -> (...)
        return mlp(features, self.layers, torch.sigmoid).squeeze(-1)


# ----------------------------------------------------------------------------- losses
# With D = sigmoid(l): -log D = softplus(-l), -log(1 - D) = softplus(l).


def d_loss(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    """D ascends log D(x) + log(1 - D(G(z))) (Eq. 1): descend the two BCE terms."""
    return F.softplus(-real_logit) + F.softplus(fake_logit)


def g_loss(fake_logit: torch.Tensor) -> torch.Tensor:
    """Non-saturating -log D(G(z)) (Sec. 3): Eq. 1's fixed point, strong gradients early."""
    return F.softplus(-fake_logit)


def r1_penalty(real_logit: torch.Tensor, real_features: torch.Tensor, gamma: float):
    """gamma/2 ||d logit / dx||^2 at the real batch's features (Mescheder et al. 2018, Eq. 9);
    the graph is kept so that D descends it."""
    (grad,) = torch.autograd.grad(real_logit.sum(), real_features, create_graph=True)
    return 0.5 * gamma * grad.square().sum()


# ----------------------------------------------------------------------------- train


def train_epoch(G, D, opt_g, opt_d, args, device) -> dict[str, torch.Tensor]:
    """One epoch of Algorithm 1: d_steps D updates, then g_steps G updates (D fixed)."""
    b = args.batch_size
    real = sample_real((args.d_steps, b), device)
    with torch.no_grad():  # G is fixed during the D phase: all fake batches in one call
        fake = G(sample_noise((args.d_steps, b), device))
    feats = torch.stack([D.features(real), D.features(fake)], 1)  # (d_steps, 2: real/fake, F)
    for i in range(args.d_steps):
        x = feats[i].requires_grad_(args.r1_gamma > 0)
        logits = D(x)
        loss_d = d_loss(logits[0], logits[1])
        if args.r1_gamma > 0:  # the fake row does not touch the real logit: grad 0 there
            loss_d = loss_d + r1_penalty(logits[0], x, args.r1_gamma)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
    D.requires_grad_(False)  # only G's weights get gradients in the G phase
    noise = sample_noise((args.g_steps, b), device)
    for i in range(args.g_steps):
        fake = G(noise[i])
        loss_g = g_loss(D(D.features(fake)))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    D.requires_grad_(True)
    logits = logits.detach()
    return {"d_real_err": F.softplus(-logits[0]), "d_fake_err": F.softplus(logits[1]),
            "g_err": loss_g.detach(), "fake": fake.detach()}  # fmt: skip


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def generate(G, n: int, device, gen: torch.Generator) -> np.ndarray:
    return G(sample_noise((n,), device, gen)).cpu().double().numpy()


def describe(samples: np.ndarray) -> dict[str, float]:
    """Mean, std, skewness, excess kurtosis (population estimators, as the moments mode)."""
    x = np.asarray(samples, dtype=np.float64)
    z = (x - x.mean()) / x.std()
    return {"mean": float(x.mean()), "std": float(x.std()), "skewness": float(np.mean(z**3)),
            "excess_kurtosis": float(np.mean(z**4) - 3.0)}  # fmt: skip


def ks_to_normal(samples: np.ndarray, mean: float, std: float) -> float:
    """Kolmogorov-Smirnov statistic sup |F_n - F| against Normal(mean, std)."""
    return float(stats.kstest(samples, "norm", args=(mean, std)).statistic)


def wasserstein1_to_normal(samples: np.ndarray, mean: float, std: float) -> float:
    """Exact W1 = int |F_n(x) - F(x)| dx. F_n is a step function and F has the antiderivative
    A(x) = std (t Phi(t) + phi(t)), t = (x - mean) / std, so each step integrates in closed form."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = len(x)

    def antideriv(v):
        t = (v - mean) / std
        return std * (t * special.ndtr(t) + np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi))

    total = antideriv(x[0]) + (antideriv(x[-1]) - x[-1] + mean)  # the two tails
    a, b, c = x[:-1], x[1:], np.arange(1, n) / n  # F_n = c on [a, b]; F crosses c at `cross`
    cross = np.clip(mean + std * special.ndtri(c), a, b)
    below = c * (cross - a) - (antideriv(cross) - antideriv(a))
    above = (antideriv(b) - antideriv(cross)) - c * (b - cross)
    return float(total + below.sum() + above.sum())


def evaluate(G, device, gen: torch.Generator) -> tuple[dict, np.ndarray]:
    samples = generate(G, EVAL_SAMPLES, device, gen)
    m = describe(samples)
    m["moments_ok"] = all(abs(m[k] - {"mean": MEAN, "std": STD}.get(k, 0.0)) <= tol
                          for k, tol in MOMENT_TOLERANCE.items())  # fmt: skip
    m["ks"] = ks_to_normal(samples, MEAN, STD)
    m["w1"] = wasserstein1_to_normal(samples, MEAN, STD)
    return m, samples


@torch.no_grad()
def discriminator_health(D, G, args, device, gen: torch.Generator, batches: int = 200) -> dict:
    """d_first_layer_slope: mean sigmoid'(pre-activation) of D's first layer on real batches over
    its maximum 1/4 (near 0: saturated, so D is blind and G gets no gradient); d_real, d_fake:
    mean D on real and generated batches (0.5 / 0.5: D cannot tell them apart)."""
    feats = D.features(sample_real((batches, args.batch_size), device, gen))
    fake = D.features(G(sample_noise((batches, args.batch_size), device, gen)))
    pre = F.linear(feats, D.layers[0].weight, D.layers[0].bias)
    slope = torch.sigmoid(pre) * torch.sigmoid(-pre)  # sigmoid'(t), exact in float32 too
    return {"d_first_layer_slope": float(slope.mean() / 0.25),
            "d_real": float(torch.sigmoid(D(feats)).mean()),
            "d_fake": float(torch.sigmoid(D(fake)).mean())}  # fmt: skip


# ----------------------------------------------------------------------------- plots
# matplotlib's Figure without pyplot: no backend, no window, nothing to close; imported only
# when a run gets this far.


def save_figure(fig, path: Path, title: str) -> None:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def plot_histograms(snapshots: dict, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    epochs = sorted(snapshots)
    cols, rows = min(4, len(epochs)), math.ceil(len(epochs) / 4)
    axes = Figure(figsize=(3.2 * cols, 2.8 * rows)).subplots(rows, cols, squeeze=False)
    grid = np.linspace(MEAN - 4 * STD, MEAN + 4 * STD, 400)
    pdf = stats.norm.pdf(grid, MEAN, STD)
    for ax in axes.flat[len(epochs) :]:
        ax.axis("off")
    for ax, epoch in zip(axes.flat, epochs, strict=False):
        x = snapshots[epoch]
        lo, hi = min(grid[0], np.percentile(x, 0.5)), max(grid[-1], np.percentile(x, 99.5))
        ax.hist(x, bins=60, range=(lo, hi), density=True, color="tab:orange", alpha=0.7,
                label="generated")  # fmt: skip
        ax.plot(grid, pdf, color="k", lw=1.2, label="target")
        ax.set_ylim(0, 1.5 * pdf.max())  # a spike may leave the frame: its title says so
        ax.set_title(f"epoch {epoch}: mean {x.mean():.2f} std {x.std():.2f}", fontsize=8)
        ax.set_xlabel("value x", fontsize=7)
        ax.set_ylabel("density (1/x)", fontsize=7)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    save_figure(axes.flat[0].figure, path, title)


def plot_moments(traj: np.ndarray, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    axes = Figure(figsize=(9, 3.2)).subplots(1, 2)
    for ax, col, name, target in ((axes[0], 0, "mean", MEAN), (axes[1], 1, "std", STD)):
        ax.plot(np.arange(1, len(traj) + 1), traj[:, col], lw=0.6, label=f"generated batch {name}")
        ax.axhline(target, color="k", ls="--", label=f"target {target:g}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"batch {name} (value units)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save_figure(axes[0].figure, path, title)


@torch.no_grad()
def plot_map(G, device, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    u = torch.linspace(0.001, 0.999, 500, device=device)
    mapped, u = G(u).cpu().numpy(), u.cpu().numpy()
    ideal = MEAN + STD * special.ndtri(u)
    ax = Figure(figsize=(5, 3.4)).subplots()
    ax.plot(u, ideal, "k--", lw=1, label="ideal maps mean + std Phi^-1(u or 1 - u)")
    ax.plot(u, ideal[::-1], "k--", lw=1)
    ax.plot(u, mapped, color="tab:orange", label="learned G(u)")
    ax.set_xlabel("input u ~ U(0, 1)")
    ax.set_ylabel("G(u) (value units)")
    ax.legend(fontsize=7)
    save_figure(ax.figure, path, f"{title}\nflat stretches of G(u) are spikes in the histogram")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_dir = resolve_run_dir(args)
    ckpt = None
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, version=CHECKPOINT_VERSION)
        for key in (*TRAINING_FLAGS, "seed", "standardise"):
            setattr(args, key, ckpt["config"][key])
    set_threads(args.threads)
    device = pick_device(args.device)
    seed_everything(args.seed)
    # Evaluation, snapshots and D's input scale draw from their own generators, so they never
    # move the training run's random stream.
    eval_gen = torch.Generator(device).manual_seed(args.seed + 1)
    ref = sample_real((100_000,), device, torch.Generator(device).manual_seed(args.seed + 2))
    shift, scale = (ref.mean().item(), ref.std().item()) if args.standardise else (0.0, 1.0)
    G = Generator().to(device)
    D = Discriminator(args.mode, args.batch_size, shift, scale).to(device)
    G_avg = copy.deepcopy(G).requires_grad_(False)  # the average that is evaluated
    # foreach: one op per update for all tensors; at this size it halves the optimizer's time
    opt_d = torch.optim.SGD(D.parameters(), lr=args.lr_d, momentum=MOMENTUM, foreach=True)
    opt_g = torch.optim.SGD(G.parameters(), lr=args.lr_g, momentum=MOMENTUM, foreach=True)
    state = {"G": G, "D": D, "G_avg": G_avg, "opt_g": opt_g, "opt_d": opt_d}
    start, traj, snapshots = 0, torch.zeros(args.epochs, 2, device=device), {}
    if ckpt is not None:
        for key, obj in state.items():
            obj.load_state_dict(ckpt[key])
        start, snapshots = ckpt["epoch"], ckpt["snapshots"]
        traj[:start] = ckpt["traj"].to(device)
        eval_gen.set_state(ckpt["eval_gen"])
        set_rng_state(ckpt["rng"])
    config = {k: getattr(args, k) for k in (*TRAINING_FLAGS, "seed", "standardise", "device",
                                            "threads", "run_name")}  # fmt: skip
    config.update(d_shift=shift, d_scale=scale, device_used=str(device), torch=torch.__version__)
    open_run_dir(run_dir, config, resume=ckpt is not None, overwrite=args.overwrite)
    G_eval = G_avg if args.ema > 0 else G
    wanted = sorted({round(i * args.epochs / (SNAPSHOTS - 1)) for i in range(SNAPSHOTS)})
    if start == 0:
        snapshots[0] = generate(G_eval, 5000, device, eval_gen)

    progress = Progress(args.epochs, start, desc=f"{SCRIPT} {args.mode}")
    t0 = time.perf_counter()
    for epoch in range(start, args.epochs):
        decay = 1 - epoch / args.epochs if args.lr_decay == "linear" else 1.0
        for opt, lr in ((opt_d, args.lr_d), (opt_g, args.lr_g)):
            opt.param_groups[0]["lr"] = lr * decay
        out = train_epoch(G, D, opt_g, opt_d, args, device)
        if args.ema > 0:
            with torch.no_grad():
                for p_avg, p in zip(G_avg.parameters(), G.parameters(), strict=True):
                    p_avg.lerp_(p, 1.0 - args.ema)
        std, mean = torch.std_mean(out["fake"], correction=0)
        traj[epoch] = torch.stack([mean, std])
        done = epoch + 1
        if done in wanted:
            snapshots[done] = generate(G_eval, 5000, device, eval_gen)
        if epoch % LOG_EVERY == 0 or done == args.epochs:
            health = discriminator_health(D, G, args, device, eval_gen, batches=20)
            row = {"epoch": done, **{k: float(out[k]) for k in ("d_real_err", "d_fake_err", "g_err")},
                   "fake_mean": float(mean), "fake_std": float(std), **health,
                   "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
            append_jsonl(run_dir / "log.jsonl", row)
            progress.update(min(LOG_EVERY, done - progress.n),
                            f"fake mean {row['fake_mean']:.3f} std {row['fake_std']:.3f}")  # fmt: skip
        if done % CHECKPOINT_EVERY == 0 or done == args.epochs:
            save_checkpoint(run_dir / "checkpoint.pt", {
                "config": config, "epoch": done, **{k: v.state_dict() for k, v in state.items()},
                "traj": traj[:done].cpu(), "snapshots": snapshots, "eval_gen": eval_gen.get_state(),
            }, version=CHECKPOINT_VERSION)  # fmt: skip
    progress.close()
    train_seconds = time.perf_counter() - t0

    metrics, samples = evaluate(G_eval, device, eval_gen)
    if args.ema > 0:
        raw, _ = evaluate(G, device, eval_gen)
        metrics["last_iterate"] = {k: raw[k] for k in ("mean", "std", "ks", "moments_ok")}
    metrics.update(discriminator_health(D, G, args, device, eval_gen))
    metrics.update(evaluated_generator="average" if args.ema > 0 else "last iterate",
                   epochs=args.epochs, train_seconds=round(train_seconds, 2))  # fmt: skip
    np.save(run_dir / "samples.npy", samples.astype(np.float32))
    write_json(run_dir / "metrics.json", metrics)
    title = f"gan_1d_normal, mode {args.mode}, preset {args.preset}, seed {args.seed}"
    plot_histograms(snapshots, run_dir / "histograms.png", title)
    plot_moments(traj.cpu().numpy(), run_dir / "moments.png", title)
    plot_map(G_eval, device, run_dir / "input_distribution.png", title)
    print(f"{SCRIPT}: mean {metrics['mean']:.3f} std {metrics['std']:.3f} "
          f"skew {metrics['skewness']:.3f} kurt {metrics['excess_kurtosis']:.3f} "
          f"KS {metrics['ks']:.4f} W1 {metrics['w1']:.4f} -> {run_dir}", flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(run_cli(main))
