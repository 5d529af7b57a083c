"""The reference copy of the common block: the boilerplate every training script carries verbatim
between the two marker lines (CleanRL style: each script reads top to bottom on its own, and
tests/test_common_block.py fails when a copy drifts from this file).

It needs these imports in the script (and nothing else from it):
    import argparse, json, os, random, shutil, sys, time
    from pathlib import Path
    import numpy as np
    import torch
    from tqdm import tqdm
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
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
