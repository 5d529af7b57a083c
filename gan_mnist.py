"""An MLP GAN on MNIST that trains in minutes on a CPU and scores its own samples.

Paper: Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014 (arXiv:1406.2661). G maps
Gaussian noise z to a 28x28 image, D scores how real an image looks, and the two play Eq. 1,

    min_G max_D  V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))],

by alternating stochastic gradient steps (Algorithm 1: k D updates, then one G update), with G
maximising log D(G(z)) (Sec. 3, the non-saturating loss).

Presets (PRESETS below; docs/gan_mnist.md says what each measured): `recipe` (the default) is
the study notes' GAN plus what measured better: an R1 penalty on D (Mescheder et al. 2018), an
EMA of G's weights, learning rates falling linearly to 0 over 30 epochs, and discriminator
rejection sampling (Azadi et al. 2019) when drawing images. `notes` is the notes' GAN as
written (200 epochs), `classic` the notes' PyTorch-GAN MLP (50 epochs).

Quality is scored by a small CNN digit classifier trained once on MNIST train and cached in
<data-root>/cache/: FID in its 128-d feature space against MNIST test (with the train-vs-test
FID as the floor), the classifier Inception Score (at most 10) and the share of each digit.

Full run:   python gan_mnist.py                          # recipe, 30 epochs, ~10 min on 1 core
Quick run:  python gan_mnist.py --epochs 1 --eval-samples 2000
The notes:  python gan_mnist.py --preset notes           # 200 epochs; add --epochs 30 for less
Generate:   python gan_mnist.py --generate 1000 --checkpoint RUN/checkpoint.pt --samples-out s.npy
Re-score:   python gan_mnist.py --eval-only --checkpoint RUN/checkpoint.pt

RUN is outputs/gan_mnist/<run-name>/; a run writes there config.json, metrics.json, log.jsonl,
checkpoint.pt (each epoch), samples/epoch_XXX.png (fixed noise, one per epoch),
samples_final.png and losses.png.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gzip
import hashlib
import io
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
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

# -------------------------------------------------------------------------------------- config

CHECKPOINT_VERSION = 3

# Each preset fixes the models, the optimiser and the training recipe; the flags named in
# OVERRIDABLE replace the preset's value when given.
PRESETS = {
    "recipe": dict(arch="notes", latent_dim=96, lr=3e-4, betas=(0.4, 0.8), weight_decay=1e-4,
                   epochs=30, recon_weight=0.05, r1_gamma=0.1, ema_decay=0.9999,
                   lr_decay="linear", sampler="drs"),
    "notes": dict(arch="notes", latent_dim=96, lr=3e-4, betas=(0.4, 0.8), weight_decay=1e-4,
                  epochs=200, recon_weight=0.05, r1_gamma=0.0, ema_decay=0.0,
                  lr_decay="none", sampler="g"),
    "classic": dict(arch="classic", latent_dim=100, lr=2e-4, betas=(0.5, 0.999), weight_decay=0.0,
                    epochs=50, recon_weight=0.0, r1_gamma=0.0, ema_decay=0.0,
                    lr_decay="none", sampler="g"),
}  # fmt: skip
OVERRIDABLE = ("epochs", "recon_weight", "r1_gamma", "ema_decay", "sampler")
# Flags that shape the training: with --resume they come from the checkpoint and may not be given.
TRAINING_FLAGS = {"--preset", "--epochs", "--batch-size", "--d-steps", "--g-loss", "--recon-weight",
                  "--r1-gamma", "--ema-decay", "--sampler", "--drs-percentile", "--eval-every",
                  "--eval-samples", "--seed"}  # fmt: skip

# Lazy R1 (Karras et al. 2020): on every 4th D update with 4 x gamma, the same on average at a
# quarter of the cost; every 16th measured worse (docs/gan_mnist.md).
R1_EVERY = 4
DRS_BURN_IN = 10_000  # G samples D scores first, to fix DRS's largest logit and gamma
LOG_EVERY = 100  # steps between log.jsonl rows
# The evaluation classifier: changing anything here (or the training data) invalidates the cache.
CLASSIFIER_CONFIG = dict(version=3, seed=1234, epochs=3, batch_size=128, lr=3e-3, feature_dim=128)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__[__doc__.index("Full run:") :],
                       allow_abbrev=False)  # fmt: skip
    add_common_args(p)
    p.add_argument("--preset", choices=sorted(PRESETS), default="recipe",
                   help="recipe: the best measured; notes / classic: the study notes' two GANs")  # fmt: skip
    p.add_argument("--epochs", type=int, default=None,
                   help="passes of D over MNIST train (default: the preset's: 30, notes 200, classic 50)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64, help="images per D update")
    p.add_argument("--d-steps", type=int, default=1, help="k of Algorithm 1: D updates per G update")  # fmt: skip
    p.add_argument("--g-loss", choices=("nonsaturating", "minimax"), default="nonsaturating",
                   help="G maximises log D(G(z)) (Sec. 3) or minimises log(1 - D(G(z))) (Eq. 1)")  # fmt: skip
    p.add_argument("--recon-weight", type=float, default=None,
                   help="weight of the notes' L1 term |G(z) - x| in G's loss (default: 0.05, classic 0)")  # fmt: skip
    p.add_argument("--r1-gamma", type=float, default=None,
                   help="R1 penalty gamma/2 E||grad_x D(x)||^2 on real images (Mescheder et al. "
                        "2018, Eq. 9); 0 turns it off (default: the preset's: recipe 0.1, else 0)")  # fmt: skip
    p.add_argument("--ema-decay", type=float, default=None,
                   help="EMA of G's weights, used to draw images; 0: G's own (default: recipe 0.9999, else 0)")  # fmt: skip
    p.add_argument("--sampler", choices=("drs", "g"), default=None,
                   help="how evaluations, the final grid and --generate draw images: drs keeps "
                        "or rejects G's samples by D's logit (Azadi et al. 2019), g is G alone "
                        "(default: the run's own; for training the preset's: recipe drs, else g)")  # fmt: skip
    p.add_argument("--drs-percentile", type=float, default=80.0,
                   help="DRS's gamma: this percentile of F(x) on the burn-in; higher keeps fewer")  # fmt: skip
    p.add_argument("--eval-every", type=int, default=0,
                   help="score the samples every N epochs; 0: at the end only")  # fmt: skip
    p.add_argument("--eval-samples", type=int, default=10_000, help="images per evaluation")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="the run to use with --generate or --eval-only")  # fmt: skip
    p.add_argument("--generate", type=int, default=None, metavar="N",
                   help="only draw N images from --checkpoint into --samples-out, no training")  # fmt: skip
    p.add_argument("--samples-out", type=Path, default=None, help=".npy file for --generate")
    p.add_argument("--eval-only", action="store_true",
                   help="only score --checkpoint (writes eval_only.json beside it)")  # fmt: skip
    return p


def check_args(args: argparse.Namespace) -> None:
    """Script-specific usage errors, before any work is done (exit 2)."""
    generate = args.generate is not None
    mode = "--generate" if generate else "--eval-only" if args.eval_only else None
    errors = [
        (args.epochs is not None and args.epochs < 1, "--epochs must be >= 1"),
        (args.batch_size < 2, "--batch-size must be >= 2 (BatchNorm needs two samples per batch)"),
        (args.d_steps < 1, "--d-steps must be >= 1 (Algorithm 1 needs one D update per G update)"),
        ((args.recon_weight or 0.0) < 0, "--recon-weight must be >= 0"),
        ((args.r1_gamma or 0.0) < 0, "--r1-gamma must be >= 0"),
        (not 0.0 <= (args.ema_decay or 0.0) < 1.0, "--ema-decay must be in [0, 1)"),
        (not 0.0 <= args.drs_percentile < 100.0, "--drs-percentile must be in [0, 100)"),
        (args.eval_every < 0, "--eval-every must be >= 0"),
        (args.eval_samples < 10, "--eval-samples must be >= 10 (the Inception Score uses 10 splits)"),
        (generate and args.eval_only, "--generate and --eval-only are separate modes: use one"),
        (generate and args.generate < 1, "--generate N needs N >= 1"),
        (mode and args.checkpoint is None, f"{mode} needs --checkpoint PATH"),
        (generate and args.samples_out is None, "--generate needs --samples-out FILE.npy"),
        (mode and args.resume is not None, f"{mode} reads --checkpoint; --resume is for training"),
        (not mode and args.checkpoint is not None, "--checkpoint is only used with --generate or --eval-only"),
        (not generate and args.samples_out is not None, "--samples-out is only used with --generate"),
    ]  # fmt: skip
    for failed, message in errors:
        if failed:
            raise UsageError(message)
    if args.resume is not None:
        # The checkpoint carries the run's settings; a different one here would silently fork it.
        clash = sorted(TRAINING_FLAGS & args.given)
        if clash:
            raise UsageError(f"--resume continues a run with its own settings; drop {clash[0]}")


# ---------------------------------------------------------------------------------------- data

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# MD5 of the published files, plain and gzipped (the .gz ones are torchvision's). Files of the
# full size are checked against them; smaller ones (subsets, test fixtures) by their header.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


def read_idx(path: Path) -> np.ndarray:
    """A uint8 idx file (magic: two zero bytes, type 0x08, ndim; big-endian dims), its size
    checked against its header, and against the published MD5 when it has MNIST's full size."""
    raw = path.read_bytes()
    data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise RunError(f"{path} is not a uint8 idx file (bad magic number)")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != math.prod(dims):
        raise RunError(f"{path} has {len(data) - offset} data bytes but its header says {dims}")
    full = {"train": 60_000, "t10k": 10_000}.get(path.name.split("-")[0])
    if dims and dims[0] == full and path.name in MNIST_MD5:
        if hashlib.md5(raw).hexdigest() != MNIST_MD5[path.name]:
            raise RunError(f"{path} has MNIST's size but not its checksum: download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def load_mnist(data_root: Path) -> dict[str, np.ndarray]:
    """MNIST as uint8 arrays: images (N, 28, 28) and labels (N,) for train and test.

    Missing files: one try of torchvision's download (quietly), then a RunError naming them.
    A failed download leaves no empty folders behind."""
    raw = data_root / "MNIST" / "raw"

    def find() -> dict[str, Path | None]:  # the plain file, else its .gz
        paths = {key: (raw / name, raw / f"{name}.gz") for key, name in MNIST_FILES.items()}
        return {key: next((p for p in ps if p.is_file()), None) for key, ps in paths.items()}

    found = find()
    if None in found.values() and not (data_root / "MNIST" / "MNIST").exists():
        existing = raw  # the deepest folder that exists now: nothing above it is removed
        while not existing.exists():
            existing = existing.parent
        print(f"MNIST not in {raw}; trying torchvision's download ...", flush=True)
        try:
            import torchvision

            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                for train in (True, False):
                    torchvision.datasets.MNIST(str(data_root), train=train, download=True)
        except Exception as exc:  # noqa: BLE001 - offline, read-only folder, ...: say what to do
            print(f"download failed ({type(exc).__name__})", flush=True)
        remove_empty_dirs(raw, existing)
        found = find()
    missing = [MNIST_FILES[key] for key, path in found.items() if path is None]
    if missing:
        # Names the first file, or explains a link made inside an existing folder.
        how = (f"put the idx files {', '.join(missing)} (or their .gz) in {raw}/, "
               "e.g. ln -s /path/to/MNIST data/MNIST")  # fmt: skip
        require_files(data_root, [f"MNIST/raw/{n}" for n in missing], how)
    arrays = {key: read_idx(path) for key, path in found.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
            raise RunError(f"MNIST {split} files disagree: images {images.shape}, labels "
                           f"{labels.shape} in {raw}")  # fmt: skip
    return arrays


def images_to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 784) in [0, 1] on `device`."""
    return torch.from_numpy(images.reshape(len(images), -1).copy()).to(device).float().div_(255.0)


# --------------------------------------------------------------------------------------- model


def build_generator(arch: str, latent_dim: int) -> nn.Sequential:
    """G: z -> 784 pixels. notes: Linear -> BatchNorm1d -> GELU blocks (the notes: BatchNorm
    speeds up convergence, GELU beat ReLU), Sigmoid to [0, 1]. classic: PyTorch-GAN's blocks,
    whose BatchNorm1d(out, 0.8) passes 0.8 as eps, none on the first block, Tanh to [-1, 1]."""
    widths = [latent_dim, 128, 256, 512, 1024]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if arch == "notes":
            layers += [nn.BatchNorm1d(fan_out), nn.GELU()]
        else:
            layers += [nn.BatchNorm1d(fan_out, eps=0.8)] if i > 0 else []
            layers.append(nn.LeakyReLU(0.2))
    layers += [nn.Linear(1024, 28 * 28), nn.Sigmoid() if arch == "notes" else nn.Tanh()]
    return nn.Sequential(*layers)


def build_discriminator(arch: str) -> nn.Sequential:
    """D: 784 pixels -> a logit l; the paper's D(x) = sigmoid(l), folded into the losses. No
    BatchNorm, so each row's logit depends on that row alone (one pass can score real + fake)."""
    if arch == "notes":
        widths, act = [784, 512, 256, 128, 64, 32], nn.GELU
    else:
        widths, act = [784, 512, 256], lambda: nn.LeakyReLU(0.2)
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(fan_in, fan_out), act()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], 1))


def to_model_range(x01: torch.Tensor, arch: str) -> torch.Tensor:
    """[0, 1] pixels -> G's output range: [0, 1] (notes) or [-1, 1] (classic)."""
    return x01 if arch == "notes" else x01 * 2.0 - 1.0


def to_unit_range(x: torch.Tensor, arch: str) -> torch.Tensor:
    return x if arch == "notes" else (x + 1.0) * 0.5


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for weights and BatchNorm statistics."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        if e.dtype.is_floating_point:
            e.lerp_(b, 1.0 - decay)
        else:
            e.copy_(b)


def ema_decay_at(step: int, cap: float) -> float:
    """Warm-up decay_t = (1 + t) / (10 + t), capped: the EMA averages about the last t / 9 steps
    until the cap takes over, so early epochs are not dragged back to the random initial G."""
    return min(cap, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def sample(generator: nn.Module, z: torch.Tensor, chunk: int) -> torch.Tensor:
    """G(z) in equal chunks with per-chunk BatchNorm statistics, as in training, on a throwaway
    copy so the generator's running statistics stay untouched."""
    net = copy.deepcopy(generator).train()
    return torch.cat([net(zc) for zc in z.tensor_split(max(1, math.ceil(len(z) / chunk)))])


def drs_acceptance_logit(logits: torch.Tensor, max_logit: torch.Tensor, eps: float = 1e-6):
    """F(x) of discriminator rejection sampling (Azadi et al. 2019, Sec. 3), before gamma.

    An optimal D has logit D~(x) = log p_data(x) / p_g(x) (Goodfellow et al. 2014, Prop. 1), so
    keeping a G sample with probability p = exp(D~(x) - D~_M), D~_M the largest logit, is exact
    rejection sampling of p_data. F is the logit of that p:
    F = D~ - D~_M - log(1 - exp(D~ - D~_M - eps)); eps keeps the log finite at the maximum.
    Logits above D~_M (unseen in the burn-in) are clamped to it: kept with p ~ 1."""
    delta = (logits - max_logit).clamp(max=0.0)
    return delta - torch.log1p(-torch.exp(delta - eps))


@torch.no_grad()
def drs_sample(generator: nn.Module, discriminator: nn.Module, n: int, latent_dim: int, chunk: int,
               percentile: float | None, burn_in: int, rng: torch.Generator,
               device: torch.device) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """n samples of G kept by DRS (in G's range) and the sampler's statistics; every random
    number comes from `rng`. A burn-in fixes D~_M and gamma = the percentile of F over it (F -
    gamma = 0 keeps with probability 1/2); each proposal is kept with probability
    sigmoid(F(x) - gamma). percentile None: gamma = 0, the exact rule p = exp(D~ - D~_M)."""
    was_training = discriminator.training
    discriminator.eval()

    def propose(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = sample(generator, torch.randn(m, latent_dim, generator=rng).to(device), chunk)
        return x, discriminator(x).flatten().double().cpu()

    try:
        _, burn_logits = propose(max(burn_in, chunk))
        max_logit = burn_logits.max()
        f_burn = drs_acceptance_logit(burn_logits, max_logit)
        gamma = torch.quantile(f_burn, percentile / 100.0) if percentile is not None else 0.0
        kept, n_kept, proposed, block = [], 0, 0, max(chunk, 4096)
        while n_kept < n:
            if proposed >= 1000 * n + 100 * block:
                raise RunError(f"DRS kept only {n_kept} of {proposed} proposals: lower "
                               "--drs-percentile")  # fmt: skip
            x, logits = propose(block)
            keep_p = torch.sigmoid(drs_acceptance_logit(logits, max_logit) - gamma)
            keep = torch.rand(block, generator=rng, dtype=torch.float64) < keep_p
            kept.append(x[keep.to(x.device)])
            n_kept, proposed = n_kept + int(keep.sum()), proposed + block
    finally:
        discriminator.train(was_training)
    stats = {"drs_acceptance": n_kept / proposed, "drs_max_logit": float(max_logit),
             "drs_gamma": float(gamma)}  # fmt: skip
    return torch.cat(kept)[:n], stats


def draw_samples(generator: nn.Module, discriminator: nn.Module | None, n: int, cfg: dict,
                 sampler: str, rng: torch.Generator, device: torch.device) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """n images in [0, 1] from `sampler` ("drs" or "g"), every random number from `rng`."""
    if sampler == "drs":
        x, stats = drs_sample(generator, discriminator, n, cfg["latent_dim"], cfg["batch_size"],
                              cfg["drs_percentile"], DRS_BURN_IN, rng, device)  # fmt: skip
    else:
        # At least one training-size batch, so the batch statistics are those of training.
        z = torch.randn(max(n, cfg["batch_size"]), cfg["latent_dim"], generator=rng).to(device)
        x, stats = sample(generator, z, cfg["batch_size"])[:n], {}
    return to_unit_range(x, cfg["arch"]), stats


# ---------------------------------------------------------------- losses and Algorithm 1's step


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D ascends E[log D(x)] + E[log(1 - D(G(z)))] (Eq. 1); we descend its negative. With
    D = sigmoid(l): -log D = softplus(-l) and -log(1 - D) = softplus(l), stable for any l."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor, form: str) -> torch.Tensor:
    if form == "nonsaturating":  # Sec. 3: maximise log D(G(z)) = minimise softplus(-l)
        return F.softplus(-fake_logits).mean()
    return -F.softplus(fake_logits).mean()  # Eq. 1: minimise log(1 - D(G(z))) = -softplus(l)


def r1_penalty(discriminator: nn.Module, real: torch.Tensor, gamma: float) -> torch.Tensor:
    """R1 = gamma/2 E_x ||grad_x D(x)||^2 on real data (Mescheder et al. 2018, Eq. 9), with D's
    logit as D. It pushes D flat on the data, which damps the oscillation around the
    equilibrium. Runs outside autocast: float32, since a bf16 double backward measured worse."""
    x = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(x).sum(), x, create_graph=True)
    return 0.5 * gamma * grad.pow(2).sum(dim=1).mean()


@dataclass
class Nets:
    """What one training step updates."""

    g: nn.Module
    d: nn.Module
    g_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer
    ema: nn.Module | None = None


@dataclass
class StepConfig:
    latent_dim: int
    g_loss: str = "nonsaturating"
    recon_weight: float = 0.0
    r1_gamma: float = 0.0
    r1_every: int = 1
    ema_decay: float = 0.0
    autocast_dtype: torch.dtype | None = None


def train_step(nets: Nets, real_batches: list[torch.Tensor], step: int,
               sc: StepConfig) -> dict[str, torch.Tensor]:  # fmt: skip
    """Algorithm 1: k = len(real_batches) D updates, then one G update, then the EMA.

    The noise comes from the global torch RNG (the training run's stream, saved in every
    checkpoint). With sc.autocast_dtype the Linear layers compute in that dtype; weights,
    optimiser state and losses stay float32. Returns detached scalars (no device sync)."""
    g, d = nets.g, nets.d
    batch, device = real_batches[-1].shape[0], real_batches[-1].device

    def mixed():
        dtype = sc.autocast_dtype or torch.bfloat16
        return torch.autocast(device.type, dtype=dtype, enabled=sc.autocast_dtype is not None)

    for i, real in enumerate(real_batches):
        z = torch.randn(batch, sc.latent_dim, device=device)
        last = i == len(real_batches) - 1
        # The last D update's fake batch is reused for G's update (graph kept): one G forward
        # less; the paper draws fresh noise, which is the same in distribution.
        with torch.set_grad_enabled(last), mixed():
            fake = g(z)
        # One D pass over [real; fake]: D has no BatchNorm, so each logit is what two passes
        # give, at larger (faster) matrix products.
        with mixed():
            logits = d(torch.cat([real, fake.detach().to(real.dtype)])).float()
        real_logits, fake_logits = logits[:batch], logits[batch:]
        d_loss = discriminator_loss(real_logits, fake_logits)
        nets.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        if sc.r1_gamma > 0 and (step * len(real_batches) + i) % sc.r1_every == 0:
            # Lazy R1: every r1_every-th D update with r1_every x gamma, the same on average.
            r1_penalty(d, real, sc.r1_gamma * sc.r1_every).backward()
        nets.d_opt.step()

    # G's update through the just-updated D, with D frozen: its weight gradients would be
    # thrown away by the next zero_grad, and skipping them saves a matrix product per layer.
    d.requires_grad_(False)
    try:
        with mixed():
            fake_logits_g = d(fake).float()
        fake = fake.float()
        adv = generator_loss(fake_logits_g, sc.g_loss)
        # The notes' L1 term: + w |G(z) - x| pulls G(z) towards an (unpaired) real batch.
        recon = (fake - real_batches[-1]).abs().mean()
        g_loss = adv + sc.recon_weight * recon if sc.recon_weight > 0 else adv
        nets.g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
    finally:
        d.requires_grad_(True)
    nets.g_opt.step()
    if nets.ema is not None:
        update_ema(nets.ema, g, ema_decay_at(step, sc.ema_decay))
    return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(), "recon": recon.detach(),
            "d_real": torch.sigmoid(real_logits.detach()).mean(),
            "d_fake": torch.sigmoid(fake_logits.detach()).mean()}  # fmt: skip


# -------------------------------------------------------------------------- speed only (CPU)


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The Linear layers' compute dtype in training: bfloat16 where the hardware has it natively,
    else None (float32; emulated bfloat16 is slower). Weights and optimiser stay float32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None


def make_adam(module: nn.Module, cfg: dict) -> torch.optim.Adam:
    """Adam with the preset's settings, as the fused kernel: one pass over all parameters, the
    same update rule."""
    return torch.optim.Adam(module.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]),
                            weight_decay=cfg["weight_decay"], fused=True)  # fmt: skip


# ---------------------------------------------------------------------------------- evaluation


class DigitClassifier(nn.Module):
    """LeNet-like CNN; `features` (128-d, after the last ReLU) is the FID embedding."""

    def __init__(self, feature_dim: int = 128):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x01: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x01.reshape(-1, 1, 28, 28) - 0.5))

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x01))


def new_classifier(device: torch.device, rng: torch.Generator | None = None) -> DigitClassifier:
    """A classifier built without touching the global RNG (the GAN run's stream): made on the
    meta device, then given PyTorch's default init drawn from `rng` (or left for a state dict)."""
    with torch.device("meta"):
        model = DigitClassifier(CLASSIFIER_CONFIG["feature_dim"])
    model = model.to_empty(device=device)
    if rng is not None:
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=rng)
                bound = 1.0 / math.sqrt(m.weight[0].numel())
                nn.init.uniform_(m.bias, -bound, bound, generator=rng)
    return model


def data_fingerprint(mnist: dict[str, np.ndarray]) -> str:
    """What the classifier was trained on: a hash of MNIST train and the classifier config."""
    h = hashlib.sha256(mnist["train_images"].tobytes())
    h.update(mnist["train_labels"].tobytes())
    h.update(json.dumps(CLASSIFIER_CONFIG, sort_keys=True).encode())
    return h.hexdigest()


@torch.no_grad()
def classifier_accuracy(model: DigitClassifier, x01: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return (torch.cat([model(xb).argmax(1) for xb in x01.split(1000)]) == labels).float().mean().item()  # fmt: skip


def train_classifier(mnist: dict[str, np.ndarray], device: torch.device) -> tuple[DigitClassifier, float]:  # fmt: skip
    """The evaluation CNN, trained with its own generator for init, order and dropout: a run
    that trains it draws the same GAN numbers as one that finds it cached."""
    cfg = CLASSIFIER_CONFIG
    rng = torch.Generator().manual_seed(cfg["seed"])
    x = images_to_tensor(mnist["train_images"], device)
    y = torch.from_numpy(mnist["train_labels"].astype(np.int64)).to(device)
    model = new_classifier(device, rng).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    steps = max(1, len(x) // cfg["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=cfg["epochs"] * steps)  # fmt: skip
    for epoch in range(cfg["epochs"]):
        perm = torch.randperm(len(x), generator=rng).to(device)
        for i in range(steps):
            idx = perm[i * cfg["batch_size"] : (i + 1) * cfg["batch_size"]]
            feats = model.features(x[idx])
            keep = (torch.rand(feats.shape, generator=rng) >= 0.3).to(device)  # dropout 0.3
            loss = F.cross_entropy(model.head(feats * keep / 0.7), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"classifier epoch {epoch + 1}/{cfg['epochs']} loss {loss.item():.4f}", flush=True)
    x_test = images_to_tensor(mnist["test_images"], device)
    y_test = torch.from_numpy(mnist["test_labels"].astype(np.int64)).to(device)
    return model.eval(), classifier_accuracy(model, x_test, y_test)


def load_or_train_classifier(mnist: dict[str, np.ndarray], data_root: Path,
                             device: torch.device) -> tuple[DigitClassifier, float]:  # fmt: skip
    """The cached classifier when it was trained on these data with this config, else train
    and cache it (atomically) in <data-root>/cache/."""
    path = data_root / "cache" / "mnist_classifier.pt"
    fingerprint = data_fingerprint(mnist)
    if path.is_file():
        try:
            saved = torch.load(path, map_location=device, weights_only=True)
            if saved.get("fingerprint") == fingerprint:
                model = new_classifier(device)
                model.load_state_dict(saved["state_dict"])
                return model.eval(), float(saved["test_accuracy"])
            print(f"{path} was trained on other data or settings; retraining", flush=True)
        except Exception as exc:  # noqa: BLE001 - unreadable or an old format: retrain
            print(f"cannot use {path} ({type(exc).__name__}); retraining", flush=True)
    t0 = time.time()
    print("training the evaluation classifier (once; cached afterwards) ...", flush=True)
    model, acc = train_classifier(mnist, device)
    print(f"classifier test accuracy {acc:.4f} ({time.time() - t0:.0f} s)", flush=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                   "fingerprint": fingerprint, "test_accuracy": acc}  # fmt: skip
        torch.save(payload, path.with_name(path.name + ".tmp"))
        os.replace(path.with_name(path.name + ".tmp"), path)
    except OSError as exc:
        print(f"warning: could not cache the classifier at {path}: {exc}", flush=True)
    return model, acc


@torch.no_grad()
def classifier_outputs(model: DigitClassifier, x01: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (float64) and class probabilities for [0, 1] images."""
    feats, probs = [], []
    for xb in x01.split(1000):
        f = model.features(xb)
        feats.append(f.double().cpu())
        probs.append(F.softmax(model.head(f), dim=1).double().cpu())
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """FID = ||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)) (Heusel et al. 2017). The trace of
    the square root is the sum of sqrt(eigenvalues) of the symmetric PSD C1^(1/2) C2 C1^(1/2),
    which has the eigenvalues of C1 C2: no complex round-off; tiny negatives are clipped."""
    w, v = np.linalg.eigh(cov1)
    sqrt_cov1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = sqrt_cov1 @ cov2 @ sqrt_cov1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return max(0.0, float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_covmean))


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016), mean and sd over `splits`
    parts; with 10 classes it lies in [1, 10]."""
    scores = []
    for part in np.array_split(probs, splits):
        p_y = part.mean(axis=0, keepdims=True)
        scores.append(math.exp((part * (np.log(part + 1e-12) - np.log(p_y + 1e-12))).sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def label_entropies(probs: np.ndarray) -> dict[str, float]:
    """The two halves of the IS: ln IS = H(y) - E_x H(y|x) (one split). A low score is an
    uneven digit mix (H(y) below ln 10) or ambiguous samples (H(y|x) > 0.5 nats)."""
    p_y = probs.mean(axis=0)
    per_sample = -(probs * np.log(probs + 1e-12)).sum(axis=1)
    return {"label_entropy": float(-(p_y * np.log(p_y + 1e-12)).sum()),
            "mean_conditional_entropy": float(per_sample.mean()),
            "ambiguous_fraction": float((per_sample > 0.5).mean())}  # fmt: skip


class Evaluator:
    """Scores [0, 1] images against MNIST test, beside the real-data floor."""

    def __init__(self, classifier: DigitClassifier, mnist: dict[str, np.ndarray], device, n: int):
        self.classifier = classifier
        test_feats, test_probs = classifier_outputs(classifier, images_to_tensor(mnist["test_images"], device))  # fmt: skip
        self.test_mu, self.test_cov = gaussian_stats(test_feats)
        # Floor: n real *train* images against test (a fixed subset, own RNG).
        pick = np.random.default_rng(0).permutation(len(mnist["train_images"]))[:n]
        train_feats, _ = classifier_outputs(classifier, images_to_tensor(mnist["train_images"][pick], device))  # fmt: skip
        self.fid_floor = frechet_distance(*gaussian_stats(train_feats), self.test_mu, self.test_cov)
        self.is_real_test = inception_score(test_probs)[0]

    def score(self, x01: torch.Tensor) -> dict:
        feats, probs = classifier_outputs(self.classifier, x01)
        fid = frechet_distance(*gaussian_stats(feats), self.test_mu, self.test_cov)
        is_mean, is_std = inception_score(probs)
        fractions = np.bincount(probs.argmax(1), minlength=10) / len(probs)
        return {"fid": fid, "fid_over_floor": fid / self.fid_floor if self.fid_floor > 0 else None,
                "is": is_mean, "is_std": is_std,
                "digit_fractions": [round(float(f), 4) for f in fractions],
                "min_digit_fraction": float(fractions.min()), **label_entropies(probs)}  # fmt: skip


def evaluate(evaluator: Evaluator, generator: nn.Module, discriminator: nn.Module, cfg: dict,
             sampler: str, n: int, device: torch.device) -> dict:  # fmt: skip
    """The run's sampler as the headline, and G alone on the same noise as `g_alone` (the two are
    equal when the sampler is g). Own generators, seeded from the run's seed: an evaluation
    never moves the training run's RNG, and re-scoring a checkpoint gives the same numbers."""
    seed = cfg["seed"]
    x, _ = draw_samples(generator, None, n, cfg, "g", torch.Generator().manual_seed(seed + 2), device)  # fmt: skip
    result = {"sampler": sampler, "g_alone": evaluator.score(x)}
    if sampler == "drs":
        rng = torch.Generator().manual_seed(seed + 3)
        x, stats = draw_samples(generator, discriminator, n, cfg, "drs", rng, device)
        result.update(evaluator.score(x), **stats)
    else:
        result.update(result["g_alone"])
    result.update(fid_floor=evaluator.fid_floor, is_real_test=evaluator.is_real_test)
    return result


def format_eval(r: dict) -> str:
    g = r["g_alone"]
    fractions = " ".join(f"{d}:{f:.3f}" for d, f in enumerate(r["digit_fractions"]))
    kept = f", DRS kept {r['drs_acceptance']:.1%}" if "drs_acceptance" in r else ""
    return (f"  {r['sampler']}: IS {r['is']:.2f}  FID {r['fid']:.2f} (floor {r['fid_floor']:.2f})"
            f"  E H(y|x) {r['mean_conditional_entropy']:.3f}{kept}\n"
            f"  G alone: IS {g['is']:.2f}  FID {g['fid']:.2f}\n  digit shares {fractions}")  # fmt: skip


# ------------------------------------------------------------------------------------- figures


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_grid(x01: torch.Tensor, path: Path, nrow: int, title: str) -> None:
    """A grid of 28x28 samples with its title (epoch, step, sampler) inside the image."""
    from torchvision.utils import make_grid

    plt = pyplot()
    grid = make_grid(x01.reshape(-1, 1, 28, 28).clamp(0, 1).cpu(), nrow=nrow, padding=2, pad_value=1.0)  # fmt: skip
    fig, ax = plt.subplots(figsize=(0.55 * nrow + 0.6, 0.55 * math.ceil(len(x01) / nrow) + 1.0))
    ax.imshow(grid[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(f"{len(x01)} samples, {nrow} per row (28 x 28 px each)", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_losses(history: list[dict], path: Path, title: str) -> None:
    plt = pyplot()
    steps = [h["step"] for h in history]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot(steps, [h["d_loss"] for h in history], label="D loss")
    ax1.plot(steps, [h["g_loss"] for h in history], label="G loss")
    ax1.set_ylabel("loss (nats, mean over 100 steps)")
    ax1.set_title(title)
    ax1.legend()
    ax2.plot(steps, [h["d_real"] for h in history], label="mean D(x), real")
    ax2.plot(steps, [h["d_fake"] for h in history], label="mean D(G(z)), generated")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("D's probability of real")
    ax2.set_xlabel("generator step")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------- train


def run_config(args: argparse.Namespace, n_train: int) -> dict:
    """The flat config of a new run: the preset, then the flags that override it."""
    cfg = {"preset": args.preset, **PRESETS[args.preset]}
    cfg.update({key: getattr(args, key) for key in OVERRIDABLE if getattr(args, key) is not None})
    for key in ("seed", "batch_size", "d_steps", "g_loss", "drs_percentile", "eval_every",
                "eval_samples", "run_name"):  # fmt: skip
        cfg[key] = getattr(args, key)
    cfg.update(r1_every=R1_EVERY, data_root=str(args.data_root.resolve()), n_train=n_train,
               steps_per_epoch=n_train // (args.batch_size * args.d_steps))  # fmt: skip
    return cfg


def train(args: argparse.Namespace, device: torch.device) -> dict:
    ckpt = load_checkpoint(args.resume, version=CHECKPOINT_VERSION) if args.resume else None
    run_dir = resolve_run_dir(args)
    if ckpt is not None and "--data-root" not in args.given:
        args.data_root = Path(ckpt["config"]["data_root"])
    mnist = load_mnist(args.data_root)
    n_train = len(mnist["train_images"])
    if ckpt is not None:
        cfg = dict(ckpt["config"])
        if cfg["n_train"] != n_train:
            raise RunError(f"{args.data_root} holds {n_train} training images; the run in "
                           f"{run_dir} trained on {cfg['n_train']}")  # fmt: skip
    else:
        cfg = run_config(args, n_train)
        if cfg["steps_per_epoch"] < 1:
            raise UsageError(f"--batch-size {args.batch_size} x --d-steps {args.d_steps} is more "
                             f"than the {n_train} training images")  # fmt: skip
    dtype = autocast_dtype(device)
    cfg.update(threads=args.threads, device=str(device),
               autocast_dtype=str(dtype).replace("torch.", "") if dtype else "float32")  # fmt: skip
    classifier, clf_acc = load_or_train_classifier(mnist, args.data_root, device)

    seed_everything(cfg["seed"])
    arch, spe, total = cfg["arch"], cfg["steps_per_epoch"], cfg["epochs"] * cfg["steps_per_epoch"]
    train_x = to_model_range(images_to_tensor(mnist["train_images"], device), arch)
    g = build_generator(arch, cfg["latent_dim"]).to(device)
    d = build_discriminator(arch).to(device)
    ema = copy.deepcopy(g).requires_grad_(False) if cfg["ema_decay"] > 0 else None
    nets = Nets(g, d, make_adam(g, cfg), make_adam(d, cfg), ema)
    sc = StepConfig(cfg["latent_dim"], cfg["g_loss"], cfg["recon_weight"], cfg["r1_gamma"],
                    cfg["r1_every"], cfg["ema_decay"], dtype)  # fmt: skip
    fixed_z = torch.randn(64, cfg["latent_dim"], generator=torch.Generator().manual_seed(cfg["seed"] + 1)).to(device)  # fmt: skip
    start_epoch, history, evals = 0, [], []
    if ckpt is not None:
        g.load_state_dict(ckpt["generator"])
        d.load_state_dict(ckpt["discriminator"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        nets.g_opt.load_state_dict(ckpt["g_opt"])
        nets.d_opt.load_state_dict(ckpt["d_opt"])
        set_rng_state(ckpt["rng"])
        start_epoch, history, evals = ckpt["epoch"], ckpt["history"], ckpt["evals"]
    open_run_dir(run_dir, dict(cfg), resume=ckpt is not None, overwrite=args.overwrite)
    log_path = run_dir / "log.jsonl"
    if ckpt is not None and log_path.exists():
        # A kill after the checkpoint left rows of the epoch that is now replayed: drop them.
        with open(log_path, "r+b") as f:
            f.truncate(ckpt["log_bytes"])
    print(f"run {run_dir}: preset {cfg['preset']}, {cfg['epochs']} epochs, device {device}, "
          f"{cfg['autocast_dtype']} Linear layers", flush=True)  # fmt: skip

    sampler_net = ema if ema is not None else g
    evaluator = None

    def run_eval(epoch: int, step: int) -> dict:
        nonlocal evaluator
        if evaluator is None:
            evaluator = Evaluator(classifier, mnist, device, min(cfg["eval_samples"], n_train))
        t0 = time.time()
        r = {"epoch": epoch, "step": step,
             **evaluate(evaluator, sampler_net, d, cfg, cfg["sampler"], cfg["eval_samples"], device)}  # fmt: skip
        print(f"eval after epoch {epoch} ({time.time() - t0:.0f} s):\n{format_eval(r)}", flush=True)
        append_jsonl(log_path, {"type": "eval", **r})
        return r

    step = start_epoch * spe
    k, batch = cfg["d_steps"], cfg["batch_size"]
    progress = Progress(total, initial=step)
    t_start, train_s = time.time(), 0.0
    for epoch in range(start_epoch, cfg["epochs"]):
        perm = torch.randperm(n_train, device=device)  # from the run's RNG, restored on resume
        sums, n_sum, t_epoch = {}, 0, time.time()
        for i in range(spe):
            if cfg["lr_decay"] == "linear":  # lr_t = lr (1 - t / T) over the planned T steps
                for opt in (nets.g_opt, nets.d_opt):
                    for group in opt.param_groups:
                        group["lr"] = cfg["lr"] * (1.0 - step / total)
            first = i * k * batch
            reals = [train_x[perm[first + j * batch : first + (j + 1) * batch]] for j in range(k)]
            stats = train_step(nets, reals, step, sc)
            step += 1
            for key, v in stats.items():
                sums[key] = sums.get(key, 0.0) + v
            n_sum += 1
            msg = ""
            if step % LOG_EVERY == 0 or i == spe - 1:
                row = {"step": step, "epoch": epoch + 1, **{key: (v / n_sum).item() for key, v in sums.items()}}  # fmt: skip
                history.append(row)
                append_jsonl(log_path, row)
                sums, n_sum = {}, 0
                msg = f"epoch {epoch + 1} d_loss {row['d_loss']:.3f} g_loss {row['g_loss']:.3f}"
            progress.update(1, msg)
        train_s += time.time() - t_epoch
        done = epoch + 1
        x01 = to_unit_range(sample(sampler_net, fixed_z, batch), arch)
        save_grid(x01, run_dir / "samples" / f"epoch_{done:03d}.png", 8,
                  f"{SCRIPT} {cfg['preset']}: epoch {done}/{cfg['epochs']}, step {step}\n"
                  f"{'EMA of G' if ema is not None else 'G'}, fixed noise z")  # fmt: skip
        if cfg["eval_every"] > 0 and done % cfg["eval_every"] == 0 and done < cfg["epochs"]:
            evals.append(run_eval(done, step))
        append_jsonl(log_path, {"type": "epoch", "epoch": done, "step": step,
                                "epoch_s": time.time() - t_epoch})  # fmt: skip
        state = {"config": cfg, "generator": g.state_dict(), "discriminator": d.state_dict(),
                 "ema": ema.state_dict() if ema is not None else None,
                 "g_opt": nets.g_opt.state_dict(), "d_opt": nets.d_opt.state_dict(),
                 "epoch": done, "step": step, "history": history, "evals": evals,
                 "log_bytes": log_path.stat().st_size}  # fmt: skip
        save_checkpoint(run_dir / "checkpoint.pt", state, version=CHECKPOINT_VERSION)
        plot_losses(history, run_dir / "losses.png", f"{SCRIPT} {cfg['preset']}, seed {cfg['seed']}")  # fmt: skip
    progress.close()

    if not evals or evals[-1]["epoch"] != cfg["epochs"]:
        evals.append(run_eval(cfg["epochs"], step))
    final = evals[-1]
    rng = torch.Generator().manual_seed(cfg["seed"] + 4)
    x01, _ = draw_samples(sampler_net, d, 256, cfg, cfg["sampler"], rng, device)
    save_grid(x01, run_dir / "samples_final.png", 16,
              f"{SCRIPT} {cfg['preset']}, seed {cfg['seed']}: end of epoch {cfg['epochs']}, step "
              f"{step}\nsampler {final['sampler']}: IS {final['is']:.2f}, FID {final['fid']:.1f}")  # fmt: skip
    steps_run = step - start_epoch * spe
    metrics = {"epochs": cfg["epochs"], "steps": step, "steps_this_run": steps_run,
               "train_steps_per_s": steps_run / train_s if train_s > 0 else None,
               "wall_time_s": time.time() - t_start, "classifier_test_accuracy": clf_acc,
               "final": final, "evals": evals}  # fmt: skip
    write_json(run_dir / "metrics.json", metrics)
    print(f"done in {metrics['wall_time_s']:.0f} s; wrote {run_dir}", flush=True)
    return metrics


def sample_mode(args: argparse.Namespace, device: torch.device) -> dict | None:
    """--generate N / --eval-only: draw from or re-score a saved run, no training."""
    ckpt = load_checkpoint(args.checkpoint, version=CHECKPOINT_VERSION, flag="--checkpoint")
    cfg = {**ckpt["config"], "drs_percentile": args.drs_percentile}
    sampler = args.sampler or cfg["sampler"]
    g = build_generator(cfg["arch"], cfg["latent_dim"]).to(device)
    g.load_state_dict(ckpt["ema"] if ckpt["ema"] is not None else ckpt["generator"])
    d = build_discriminator(cfg["arch"]).to(device)
    d.load_state_dict(ckpt["discriminator"])
    if args.generate is not None:
        rng = torch.Generator().manual_seed(args.seed)
        x01, stats = draw_samples(g, d, args.generate, cfg, sampler, rng, device)
        if stats:
            print(f"DRS kept {stats['drs_acceptance']:.1%} of G's samples")
        images = (x01.reshape(-1, 28, 28) * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()  # fmt: skip
        args.samples_out.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.samples_out, images)
        print(f"wrote {images.shape} uint8 samples to {args.samples_out}")
        return None
    # --eval-only: the run's own evaluation seed, so an unchanged checkpoint re-scores the same.
    if "--data-root" not in args.given:
        args.data_root = Path(cfg["data_root"])
    mnist = load_mnist(args.data_root)
    classifier, _ = load_or_train_classifier(mnist, args.data_root, device)
    evaluator = Evaluator(classifier, mnist, device, min(args.eval_samples, len(mnist["train_images"])))  # fmt: skip
    result = {"epoch": ckpt["epoch"], "step": ckpt["step"],
              **evaluate(evaluator, g, d, cfg, sampler, args.eval_samples, device)}  # fmt: skip
    print(f"eval of {args.checkpoint} (epoch {ckpt['epoch']}):\n{format_eval(result)}")
    write_json(args.checkpoint.parent / "eval_only.json", result)
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    args.given = {a.split("=")[0] for a in argv if a.startswith("--")}
    check_common_args(args)
    check_args(args)
    set_threads(args.threads)
    device = pick_device(args.device)
    if args.generate is not None or args.eval_only:
        sample_mode(args, device)
    else:
        train(args, device)


if __name__ == "__main__":
    sys.exit(run_cli(main))
