"""The "artist" GAN: a generator learns to paint curves that lie between two parabolas
(MorvanZhou's tutorial as the study notes retell it).

A real painting is 15 points of y = a x^2 + (a - 1) at x in linspace(-1, 1, 15) with
a ~ U(1, 2), so it lies between the lower bound x^2 (a = 1) and the upper bound 2 x^2 + 1
(a = 2). G maps a 5-d Gaussian "idea" through 5 -> 128 -> 15 (ReLU) to a painting; D judges a
painting through 15 -> 128 -> 1 (ReLU, sigmoid). Batch 64, 10,000 steps, one D step then one G
step (Algorithm 1, k = 1). The default recipe (`--preset ours`) trains both nets with Adam at
lr 6e-4 and betas (0, 0.9) and evaluates a moving average of G's weights; `--preset notes` is
the tutorial's Adam at lr 1e-4 and torch's default betas (docs/gan_curve_painter.md).

Papers: Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014 (Eq. 1; the
non-saturating G loss of Sec. 3); Yazici et al., "The Unusual Effectiveness of Averaging in GAN
Training", ICLR 2019 (the moving average of G).

Full run (10,000 steps, about half a minute on one CPU core):
    python gan_curve_painter.py
    python gan_curve_painter.py --preset notes     # the tutorial's optimizer
Quick run (seconds):
    python gan_curve_painter.py --steps 300 --frame-every 100 --run-name quick

Writes outputs/gan_curve_painter/<run-name>/: config.json, metrics.json (share of 1,000
generated curves within the bounds, the fitted a against U(1, 2), D on real, generated and
family paintings), log.jsonl, frames/ (5 paintings from fixed ideas every --frame-every steps),
training.gif, final.png, losses.png, paintings.npy ((1000, 15) curves) and checkpoint.pt.
"""

from __future__ import annotations

import argparse
import copy
import json
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
from scipy import stats
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
N_IDEAS, POINTS, HIDDEN = 5, 15, 128  # the tutorial's sizes
A_LOW, A_HIGH = 1.0, 2.0  # real paintings: a ~ U(1, 2)
TOLERANCE = 0.05  # slack on the bounds when counting paintings within them
EVAL_CURVES, LOG_EVERY, CHECKPOINT_EVERY = 1000, 100, 2000
# At the tutorial's lr 1e-4 the band's edges are still being sharpened when 10,000 steps end.
# Six times the rate gets there, but only with little or no first-moment momentum: with torch's
# default betas the nets overshoot each other and the spread of the fitted a collapses.
PRESETS = {
    "ours": {"lr_g": 6e-4, "lr_d": 6e-4, "adam_betas": (0.0, 0.9)},
    "notes": {"lr_g": 1e-4, "lr_d": 1e-4, "adam_betas": (0.9, 0.999)},
}
TRAINING_FLAGS = ("preset", "steps", "batch_size", "lr_g", "lr_d", "adam_betas", "g_loss", "ema",
                  "frame_every")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    add_common_args(p)
    p.add_argument("--preset", choices=sorted(PRESETS), default="ours",
                   help="ours: Adam lr 6e-4, betas 0 0.9; notes: the tutorial's Adam lr 1e-4, "
                   "betas 0.9 0.999")  # fmt: skip
    p.add_argument("--steps", type=int, default=10_000, help="training steps (one D + one G)")
    p.add_argument("--batch-size", type=int, default=64, help="paintings per batch")
    p.add_argument("--lr-g", type=float, help="G's Adam learning rate (default: the preset's)")
    p.add_argument("--lr-d", type=float, help="D's Adam learning rate (default: the preset's)")
    p.add_argument("--adam-betas", type=float, nargs=2, metavar=("B1", "B2"),
                   help="Adam betas of both nets (default: the preset's)")  # fmt: skip
    p.add_argument("--g-loss", default="minimax", choices=("minimax", "nonsaturating"),
                   help="minimax: min log(1 - D(G(z))); nonsaturating: min -log D(G(z))")  # fmt: skip
    p.add_argument("--ema", type=float, default=0.999,
                   help="per-step decay of the average of G's weights that is evaluated; "
                   "0: the last G")  # fmt: skip
    p.add_argument("--frame-every", type=int, default=200, help="steps between GIF frames")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_common_args(args)
    for name in ("steps", "batch_size", "frame_every"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if args.resume is not None:
        given = [k for k in TRAINING_FLAGS if getattr(args, k) != parser.get_default(k)]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UsageError(f"--resume continues a run with its own settings; drop {flag}")
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.adam_betas = tuple(args.adam_betas)
    for flag in ("lr_g", "lr_d"):
        if getattr(args, flag) <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be > 0")
    if not all(0 <= b < 1 for b in args.adam_betas):
        raise UsageError("--adam-betas must both be in [0, 1)")
    if not 0 <= args.ema < 1:
        raise UsageError("--ema must be in [0, 1)")
    return args


# ----------------------------------------------------------------------------- data


def artist_works(batch: int, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Real paintings a x^2 + (a - 1), a ~ U(1, 2): (batch, len(x))."""
    a = torch.rand(batch, 1, device=x.device, generator=gen) * (A_HIGH - A_LOW) + A_LOW
    return a * x**2 + (a - 1)


# ----------------------------------------------------------------------------- models


def make_generator() -> nn.Sequential:
    return nn.Sequential(nn.Linear(N_IDEAS, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, POINTS))


def make_discriminator() -> nn.Sequential:
    # Outputs a logit; D(x) = sigmoid(logit) is applied inside the losses (stable log-sigmoid).
    return nn.Sequential(nn.Linear(POINTS, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))


# ----------------------------------------------------------------------------- losses
# With D = sigmoid(l): log D = -softplus(-l), log(1 - D) = -softplus(l), exact and finite.


def d_loss(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    """Negative of Eq. 1's D objective: -[mean log D(x) + mean log(1 - D(G(z)))]."""
    return F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean()


def g_loss(fake_logit: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "minimax":
        return -F.softplus(fake_logit).mean()  # mean log(1 - D(G(z))), Eq. 1
    if kind == "nonsaturating":
        return F.softplus(-fake_logit).mean()  # mean -log D(G(z)), Sec. 3
    raise ValueError(f"unknown generator loss {kind!r}")


# ----------------------------------------------------------------------------- evaluation


def fit_a(curves: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Least-squares a for y = a x^2 + (a - 1) = a (x^2 + 1) - 1, per curve (closed form)."""
    basis = x**2 + 1
    return (np.asarray(curves) + 1) @ basis / (basis @ basis)


def within_bounds(curves: np.ndarray, x: np.ndarray, tol: float) -> np.ndarray:
    """Boolean (n_curves, n_points): point lies in [x^2 - tol, 2 x^2 + 1 + tol]."""
    curves = np.asarray(curves)
    return (curves >= x**2 - tol) & (curves <= 2 * x**2 + 1 + tol)


def curve_metrics(curves: np.ndarray, x: np.ndarray, tol: float = TOLERANCE) -> dict:
    inside = within_bounds(curves, x, tol)
    a = fit_a(curves, x)
    residual = curves - (a[:, None] * (x**2 + 1) - 1)
    return {
        "curves_within_bounds": float(inside.all(axis=1).mean()),
        "points_within_bounds": float(inside.mean()),
        "a_mean": float(a.mean()),
        "a_std": float(a.std()),
        "a_ks_vs_uniform": float(
            stats.kstest(a, "uniform", args=(A_LOW, A_HIGH - A_LOW)).statistic
        ),
        "a_share_below_1": float((a < A_LOW).mean()),  # 0 and 0 for real paintings
        "a_share_above_2": float((a > A_HIGH).mean()),
        "fit_residual_rms": float(np.sqrt(np.mean(residual**2))),  # distance from the family
    }


D_PROBE_A = (0.8, 0.9, 1.0, 1.5, 2.0, 2.1, 2.2)


@torch.no_grad()
def evaluate(G, D, x: torch.Tensor, gen: torch.Generator) -> tuple[dict, np.ndarray]:
    curves = G(torch.randn(EVAL_CURVES, N_IDEAS, device=x.device, generator=gen))
    metrics = curve_metrics(curves.cpu().numpy(), x.cpu().numpy())
    metrics["d_real"] = torch.sigmoid(D(artist_works(EVAL_CURVES, x, gen))).mean().item()
    metrics["d_fake"] = torch.sigmoid(D(curves)).mean().item()
    # D along the parabola family a (x^2 + 1) - 1, inside and outside [1, 2]: whether D still
    # tells out-of-bounds paintings from real ones at the end of training.
    a_probe = torch.tensor(D_PROBE_A, device=x.device)[:, None]
    d_probe = torch.sigmoid(D(a_probe * (x**2 + 1) - 1))[:, 0].tolist()
    metrics["d_on_family"] = {f"{a:.2f}": d for a, d in zip(D_PROBE_A, d_probe, strict=True)}
    return metrics, curves.cpu().numpy()


# ----------------------------------------------------------------------------- plots
# matplotlib's Figure without pyplot: no backend, no window, nothing to close; imported only
# when a run gets this far.


def draw_bounds(ax, x: np.ndarray) -> None:
    ax.plot(x, 2 * x**2 + 1, c="#74BCFF", lw=3, label="upper bound 2x²+1")
    ax.plot(x, x**2, c="#FF9359", lw=3, label="lower bound x²")
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-0.6, 3.6)
    ax.set_xlabel("x (painting position)")
    ax.set_ylabel("y (painted value)")


def save_frame(curves: np.ndarray, x: np.ndarray, step: int, d_real: float, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.8, 3.0), layout="tight")
    ax = fig.subplots()
    draw_bounds(ax, x)
    for i, c in enumerate(curves):
        ax.plot(x, c, c="#4AD631", lw=1.5, alpha=0.8, label="generated" if i == 0 else None)
    ax.set_title(f"step {step}   D(real) {d_real:.2f}", fontsize=9)
    ax.legend(fontsize=6, loc="upper center")
    ax.tick_params(labelsize=7)
    ax.xaxis.label.set_size(7)
    ax.yaxis.label.set_size(7)
    fig.savefig(path, dpi=72)


def write_gif(frame_paths: list[Path], path: Path, ms_per_frame: int = 120) -> None:
    from PIL import Image

    # A shared 64-colour palette keeps the GIF small (the frames are flat line art).
    frames = [Image.open(p).convert("RGB").quantize(64) for p in frame_paths]
    tmp = path.with_name(path.name + ".tmp")
    frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                   duration=ms_per_frame, loop=0, optimize=True)  # fmt: skip
    os.replace(tmp, path)


def plot_final(curves: np.ndarray, x: np.ndarray, metrics: dict, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="tight")
    ax1, ax2 = fig.subplots(1, 2)
    draw_bounds(ax1, x)
    for c in curves[:100]:
        ax1.plot(x, c, c="#4AD631", lw=0.7, alpha=0.4)
    ax1.legend(loc="upper center", fontsize=7)
    ax1.set_title(f"100 generated paintings; {100 * metrics['curves_within_bounds']:.1f}% of "
                  f"{len(curves)} entirely within bounds", fontsize=9)  # fmt: skip
    ax2.hist(fit_a(curves, x), bins=40, range=(0.5, 2.5), density=True, color="#4AD631",
             alpha=0.7, label="fitted a, generated")  # fmt: skip
    ax2.plot([0.5, 1, 1, 2, 2, 2.5], [0, 0, 1, 1, 0, 0], "k", lw=1.2, label="U(1, 2)")
    ax2.set_xlabel("a (curve parameter, dimensionless)")
    ax2.set_ylabel("density (1/a)")
    ax2.set_title(f"a: mean {metrics['a_mean']:.3f} std {metrics['a_std']:.3f} "
                  f"KS {metrics['a_ks_vs_uniform']:.3f}", fontsize=9)  # fmt: skip
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=90)


def plot_losses(history: list[dict], path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.4), layout="tight")
    ax1, ax2 = fig.subplots(1, 2)
    steps = [h["step"] for h in history]
    ax1.plot(steps, [h["d_loss"] for h in history], label="D loss")
    ax1.plot(steps, [h["g_loss"] for h in history], label="G loss")
    ax1.set_ylabel(f"loss (nats, mean over {LOG_EVERY} steps)")
    ax2.plot(steps, [h["d_real"] for h in history], label="mean D(real)")
    ax2.plot(steps, [h["d_fake"] for h in history], label="mean D(G(z))")
    ax2.axhline(0.5, color="k", ls="--", lw=0.8, label="0.5: D cannot tell")
    ax2.set_ylabel("D's output (probability)")
    for ax in (ax1, ax2):
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=90)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_dir = resolve_run_dir(args)
    ckpt = None
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume, version=CHECKPOINT_VERSION)
        for key in (*TRAINING_FLAGS, "seed"):
            setattr(args, key, ckpt["config"][key])
        args.adam_betas = tuple(args.adam_betas)
    set_threads(args.threads)
    device = pick_device(args.device)
    seed_everything(args.seed)
    # Frames and evaluation draw from their own generator: they never move the training stream.
    eval_gen = torch.Generator(device).manual_seed(args.seed + 1)
    x = torch.linspace(-1.0, 1.0, POINTS, device=device)
    x_np = x.cpu().numpy()
    G, D = make_generator().to(device), make_discriminator().to(device)
    G_avg = copy.deepcopy(G).requires_grad_(False)  # the average that is evaluated
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=args.adam_betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=args.adam_betas)
    state = {"G": G, "D": D, "G_avg": G_avg, "opt_g": opt_g, "opt_d": opt_d}
    z_frames = torch.randn(5, N_IDEAS, device=device, generator=eval_gen)  # same 5 every frame
    step, history = 0, []
    if ckpt is not None:
        for key, obj in state.items():
            obj.load_state_dict(ckpt[key])
        step, history = ckpt["step"], ckpt["history"]
        eval_gen.set_state(ckpt["eval_gen"])
        set_rng_state(ckpt["rng"])
    config = {k: getattr(args, k) for k in (*TRAINING_FLAGS, "seed", "device", "threads",
                                            "run_name")}  # fmt: skip
    config.update(evaluated_generator="average" if args.ema > 0 else "last iterate",
                  device_used=str(device), torch=torch.__version__)  # fmt: skip
    open_run_dir(run_dir, config, resume=ckpt is not None, overwrite=args.overwrite)
    frames_dir = run_dir / "frames"
    frames_dir.mkdir(exist_ok=True)
    G_eval = G_avg if args.ema > 0 else G

    @torch.no_grad()
    def frame(at_step: int) -> None:
        d_real = torch.sigmoid(D(artist_works(256, x, eval_gen))).mean().item()
        save_frame(G_eval(z_frames).cpu().numpy(), x_np, at_step, d_real,
                   frames_dir / f"step_{at_step:07d}.png")  # fmt: skip

    if step == 0:
        frame(0)
    progress = Progress(args.steps, step, desc=SCRIPT)
    sums = torch.zeros(4, device=device)  # interval sums stay on the device: no sync per step
    t0 = time.perf_counter()
    while step < args.steps:
        real = artist_works(args.batch_size, x)
        fake = G(torch.randn(args.batch_size, N_IDEAS, device=device))
        # D step (Eq. 1) on detached fakes: G's graph stays intact for its own step below.
        real_logit, fake_logit = D(real), D(fake.detach())
        loss_d = d_loss(real_logit, fake_logit)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # G step against the updated D, whose weights are frozen for this backward only.
        D.requires_grad_(False)
        loss_g = g_loss(D(fake), args.g_loss)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        D.requires_grad_(True)
        if args.ema > 0:
            with torch.no_grad():
                for p_avg, p in zip(G_avg.parameters(), G.parameters(), strict=True):
                    p_avg.lerp_(p, 1 - args.ema)
        step += 1
        sums += torch.stack([loss_d.detach(), loss_g.detach(),
                             torch.sigmoid(real_logit.detach()).mean(),
                             torch.sigmoid(fake_logit.detach()).mean()])  # fmt: skip
        if step % LOG_EVERY == 0 or step == args.steps:
            n = LOG_EVERY if step % LOG_EVERY == 0 else step % LOG_EVERY
            d_l, g_l, d_r, d_f = (sums / n).tolist()
            sums.zero_()
            row = {"step": step, "d_loss": d_l, "g_loss": g_l, "d_real": d_r, "d_fake": d_f,
                   "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
            history.append(row)
            append_jsonl(run_dir / "log.jsonl", row)
            progress.update(n, f"D(real) {d_r:.3f} D(G(z)) {d_f:.3f}")
        if step % args.frame_every == 0 or step == args.steps:
            frame(step)
        if step % CHECKPOINT_EVERY == 0 or step == args.steps:
            save_checkpoint(run_dir / "checkpoint.pt", {
                "config": config, "step": step, **{k: v.state_dict() for k, v in state.items()},
                "history": history, "eval_gen": eval_gen.get_state(),
            }, version=CHECKPOINT_VERSION)  # fmt: skip
    progress.close()
    train_seconds = time.perf_counter() - t0

    metrics, curves = evaluate(G_eval, D, x, eval_gen)
    raw, _ = evaluate(G, D, x, eval_gen)
    metrics.update(steps=args.steps, evaluated_generator=config["evaluated_generator"],
                   train_seconds=round(train_seconds, 2),
                   last_iterate={k: raw[k] for k in ("curves_within_bounds", "a_mean", "a_std",
                                                     "a_ks_vs_uniform")})  # fmt: skip
    np.save(run_dir / "paintings.npy", curves.astype(np.float32))
    write_json(run_dir / "metrics.json", metrics)
    write_gif(sorted(frames_dir.glob("step_*.png")), run_dir / "training.gif")
    title = f"gan_curve_painter, preset {args.preset}, {args.g_loss} G loss, seed {args.seed}"
    plot_final(curves, x_np, metrics, run_dir / "final.png", f"{title}, step {args.steps}")
    plot_losses(history, run_dir / "losses.png", title)
    print(f"{SCRIPT}: {100 * metrics['curves_within_bounds']:.1f}% curves within bounds, "
          f"a mean {metrics['a_mean']:.3f} std {metrics['a_std']:.3f} "
          f"KS {metrics['a_ks_vs_uniform']:.3f} -> {run_dir}", flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(run_cli(main))
