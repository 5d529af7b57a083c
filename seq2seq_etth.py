"""Seq2seq forecasting of ETT (Electricity Transformer Temperature) with an LSTM encoder and an
attention LSTM decoder, on the Informer/Autoformer benchmark protocol.

Model (the study notes' LSTM2LSTM, fixed): an LSTM encoder reads the input window; a decoder cell
scores the encoder outputs from [previous hidden state, previous output] (Bahdanau et al., ICLR
2015, Sec. 3.1, location form as in the notes), an LSTMCell carries hidden AND cell state, and a
linear head emits the next step (or segment), fed back as the next input; teacher forcing feeds
the true previous value with probability 0.3 per step, in training only.

The default is the best recipe measured: channel independence (one shared univariate model per
channel, PatchTST / SegRNN) with 24-step segments (SegRNN, Lin et al. 2023: each LSTM step reads
or emits 24 hours) and last-value instance normalisation (NLinear, Zeng et al. AAAI 2023).
`--preset notes` is the notes' model: window 64, horizon 24, step-by-step decoding over all
channels at once, globally normalised inputs.

Protocol (Zhou et al., "Informer", AAAI 2021): 12/4/4-month train/val/test split, scaler fitted
on the training rows, every test window scored, MSE/MAE on the normalised scale.

Full run (ETTh1, 7 -> 7 channels, input 96, horizon 96; about 1 min on one CPU thread):
    python seq2seq_etth.py
    python seq2seq_etth.py --preset notes                # the notes' model (window 64, H 24)
    python seq2seq_etth.py --features S --horizon 24     # univariate OT
Quick run (seconds):
    python seq2seq_etth.py --epochs 1 --max-train-batches 20
Re-score a checkpoint and forecast past the end of the file:
    python seq2seq_etth.py --checkpoint outputs/seq2seq_etth/RUN/checkpoint.pt

Writes outputs/seq2seq_etth/<run-name>/: config.json, log.jsonl (per epoch), metrics.json (test
MSE/MAE, OT in original units, per-step MAE, persistence baseline, best validation MSE),
checkpoint.pt, pred.npy / true.npy (test windows x horizon x channels, normalised),
loss_curves.png, test_target.png, forecast.csv/.png (the `horizon` steps after the end of the
file), rolling_forecast.csv/.png (forecast, append the actual values, repeat).

The ETT data API (load_ett, make_windows, ETTData, Split) is imported by autoformer_decomp.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
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

# ----------------------------------------------------------------------------------------------
# Data: the ETT API (autoformer_decomp.py imports load_ett, make_windows, ETTData, Split)
# ----------------------------------------------------------------------------------------------

ETT_NAMES = ("ETTh1", "ETTh2", "ETTm1", "ETTm2")
ETT_COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
ETT_URL = "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/{name}.csv"
# Informer's split (Sec. 5.1): 12 months train, 4 validation, 4 test, 30-day months of hourly
# rows; the 15-minute files use the same months, 4x the rows.
HOURLY_BORDERS = (12 * 30 * 24, 16 * 30 * 24, 20 * 30 * 24)  # (8640, 11520, 14400)
ROWS_PER_HOUR = {"h": 1, "15min": 4}


def resolve_data_path(data_root: Path, data: str) -> Path:
    """'ETTh1' -> <data_root>/ETT-small/ETTh1.csv, downloaded from the ETDataset repository when
    missing; a failed download leaves no folder behind. Any other value is a CSV path."""
    if data not in ETT_NAMES:
        path = Path(data)
        if not path.is_file():
            raise RunError(f"{path} is missing (--data takes {', '.join(ETT_NAMES)} or a CSV path)")
        return path
    rel = f"ETT-small/{data}.csv"
    path = Path(data_root) / rel
    if path.is_file():
        return path
    if (Path(data_root) / "ETT-small" / "ETT-small").exists():
        require_files(Path(data_root), [rel], "")  # explains the link made inside a folder
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    url, tmp = ETT_URL.format(name=data), path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"{path} missing; downloading {url}", flush=True)
        with urllib.request.urlopen(url, timeout=20) as response:
            tmp.write_bytes(response.read())
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001 - offline, HTTP error, read-only folder: same advice
        tmp.unlink(missing_ok=True)
        remove_empty_dirs(path.parent, existing)
        reason = getattr(exc, "reason", exc)
        raise RunError(
            f"{path} is missing and the download from {url} failed ({reason}); put {data}.csv "
            "(ETDataset, ETT-small/) there or point --data-root at the folder holding ETT-small/"
        ) from None
    return path


class StandardScaler:
    """Per-channel z-score, fitted on TRAIN rows only (the notes fitted on the whole file, which
    leaks the test period's level and spread into the inputs)."""

    def fit(self, x: np.ndarray) -> StandardScaler:
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)  # population std, as the sklearn scaler Informer uses
        self.std = np.where(std > 0, std, 1.0)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x) - self.mean) / self.std

    def inverse_transform(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x) * self.std + self.mean


def time_features(dates: pd.DatetimeIndex, freq: str) -> np.ndarray:
    """Informer's 'timeF' calendar features in [-0.5, 0.5], float32 [T, F]: (minute, for
    sub-hourly rows), hour, day of week, day of month, day of year."""
    dates = pd.DatetimeIndex(dates)
    columns = [dates.hour / 23.0 - 0.5, dates.day_of_week / 6.0 - 0.5,
               (dates.day - 1) / 30.0 - 0.5, (dates.day_of_year - 1) / 365.0 - 0.5]  # fmt: skip
    if freq != "h":
        columns.insert(0, dates.minute / 59.0 - 0.5)
    return np.stack([np.asarray(c, dtype=np.float32) for c in columns], axis=1)


@dataclass
class Split:
    values: np.ndarray  # float32 [T, C], normalised with the train-fitted scaler
    marks: np.ndarray  # float32 [T, F], time_features of the rows
    dates: pd.DatetimeIndex  # [T]
    start: int  # file row of values[0]


@dataclass
class ETTData:
    columns: list[str]  # loaded columns (M/MS: every numeric column, target LAST; S: [target])
    target: str
    target_channel: int  # index of the target in `columns` (always the last)
    out_channels: list[int]  # forecast and scored channels: M all, S [0], MS [C-1]
    scaler: StandardScaler
    freq: str  # "h" or "15min"
    borders: dict[str, tuple[int, int]]  # file rows [start, end) per split, lookback included
    train: Split
    val: Split
    test: Split
    raw: pd.DataFrame  # the whole file, original units


def read_ett_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file ends the same way
        raise RunError(f"{path} is not a readable CSV ({type(exc).__name__})") from None
    if "date" not in frame.columns:
        raise RunError(f"{path} has no 'date' column (columns: {', '.join(map(str, frame))})")
    try:
        frame["date"] = pd.to_datetime(frame["date"])
    except Exception:  # noqa: BLE001
        raise RunError(f"{path}: the 'date' column does not parse as dates") from None
    return frame


def select_columns(frame: pd.DataFrame, path: Path, data: str, features: str, target: str):
    """The columns --features needs, target last. A named ETT file must hold all seven ETT
    columns for M/MS: with one missing the model would silently train on the rest."""
    present = [c for c in frame.columns if c != "date"]
    needed = [target] if features == "S" or data not in ETT_NAMES else list(ETT_COLUMNS)
    needed += [] if target in needed else [target]
    missing = [c for c in needed if c not in present]
    if missing:
        raise RunError(
            f"{path} lacks column(s) {', '.join(missing)} that --features {features} with "
            f"--target {target} needs (it has {', '.join(map(str, present))})"
        )
    return [target] if features == "S" else [c for c in present if c != target] + [target]


def numeric_block(frame: pd.DataFrame, columns: list[str], path: Path) -> np.ndarray:
    values = frame[columns].apply(pd.to_numeric, errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise RunError(f"{path}: column '{columns[col]}' is not numeric or has a gap "
                       f"(file line {row + 2}: {frame[columns[col]].iloc[row]!r})")  # fmt: skip
    return values.to_numpy(dtype=np.float64)


def infer_freq(dates: pd.DatetimeIndex, path: Path) -> str:
    minutes = round(pd.Series(dates).diff().median() / pd.Timedelta(minutes=1))
    freq = {60: "h", 15: "15min"}.get(minutes)
    if freq is None:
        raise RunError(f"{path}: rows are {minutes} min apart; the split needs hourly or 15-min")
    return freq


def load_ett(data_root: Path, data: str = "ETTh1", features: str = "M", target: str = "OT",
             seq_len: int = 96) -> ETTData:  # fmt: skip
    """The standard split: train [0, 8640), val [8640 - L, 11520), test [11520 - L, 14400)
    hourly (x4 for 15-min); val and test start L rows early so every period row is scored."""
    path = resolve_data_path(data_root, data)
    raw = read_ett_csv(path)
    columns = select_columns(raw, path, data, features, target)
    values = numeric_block(raw, columns, path)
    dates = pd.DatetimeIndex(raw["date"])
    freq = infer_freq(dates, path)
    b_train, b_val, b_test = (b * ROWS_PER_HOUR[freq] for b in HOURLY_BORDERS)
    if len(raw) < b_test:
        raise RunError(f"{path} has {len(raw)} rows; the standard split needs {b_test}")
    borders = {"train": (0, b_train), "val": (b_train - seq_len, b_val),
               "test": (b_val - seq_len, b_test)}  # fmt: skip
    scaler = StandardScaler().fit(values[:b_train])
    normalised = scaler.transform(values).astype(np.float32)
    marks = time_features(dates, freq)
    splits = {name: Split(normalised[a:b], marks[a:b], dates[a:b], a)
              for name, (a, b) in borders.items()}  # fmt: skip
    n = len(columns)
    out_channels = {"M": list(range(n)), "S": [0], "MS": [n - 1]}[features]
    return ETTData(columns, target, n - 1, out_channels, scaler, freq, borders, **splits, raw=raw)


def make_windows(split: Split, seq_len: int, label_len: int, horizon: int):
    """Every sliding window of a split, in order, as float32 views: x [N, L, C],
    y [N, label_len + H, C], x_mark [N, L, F], y_mark [N, label_len + H, F]; window i reads
    rows i .. i+L-1 and y is rows i+L-label_len .. i+L+H-1. N = T - L - H + 1 (no drop_last:
    the notes' test loader skipped the last windows)."""
    n_windows = len(split.values) - seq_len - horizon + 1
    if n_windows <= 0:
        raise RunError(f"a split of {len(split.values)} rows is too short for input {seq_len} "
                       f"+ horizon {horizon}")  # fmt: skip
    values, marks = torch.from_numpy(split.values), torch.from_numpy(split.marks)

    def windows(t: torch.Tensor, start: int, length: int) -> torch.Tensor:
        return t[start:].unfold(0, length, 1).transpose(1, 2)[:n_windows]

    y_start, y_len = seq_len - label_len, label_len + horizon
    return (windows(values, 0, seq_len), windows(values, y_start, y_len),
            windows(marks, 0, seq_len), windows(marks, y_start, y_len))  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------

CHECKPOINT_VERSION = 3
PRESETS = {
    # The best recipe measured (H=96, M, validation MSE): one shared univariate model per
    # channel, 24-step segments, last-value instance norm, trained on the absolute error.
    "best": dict(window=96, horizon=96, segment=24, channel_independent=True,
                 instance_norm="last", batch_size=32, loss="l1"),
    # The notes' LSTM2LSTM (003): window 64, horizon 24, batch 16, one step at a time over all
    # channels, inputs only globally normalised.
    "notes": dict(window=64, horizon=24, segment=1, channel_independent=False,
                  instance_norm="none", batch_size=16, loss="mse"),
}  # fmt: skip
# Informer's schedule (App. E): the LR halves every epoch and training stops after 3 epochs
# without a better validation MSE; after 6 halvings little changes. Not flags: never varied.
LR_DECAY, PATIENCE, CLIP, DROPOUT, EVAL_BATCH = 0.5, 3, 1.0, 0.05, 512
# What defines the model: taken from a checkpoint whatever the command line says.
MODEL_KEYS = ("data", "features", "target", "window", "horizon", "hidden", "layers",
              "teacher_forcing", "instance_norm", "channel_independent", "segment")  # fmt: skip


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--preset", choices=sorted(PRESETS), default="best",
                   help="best: the most accurate recipe measured; notes: the notes' model. "
                   "Flags below that say 'preset' override it")  # fmt: skip
    p.add_argument("--data", default="ETTh1", help=f"{', '.join(ETT_NAMES)} or a CSV path")
    p.add_argument("--features", default="M", choices=("M", "S", "MS"),
                   help="M: all channels -> all, S: target -> target, MS: all -> target")  # fmt: skip
    p.add_argument("--target", default="OT", help="the target column (S, MS; last in M)")
    p.add_argument("--window", type=int, help="input length L (preset: best 96, notes 64)")
    p.add_argument("--horizon", type=int, help="forecast length H (preset: best 96, notes 24)")
    p.add_argument("--segment", type=int, metavar="S",
                   help="time steps per LSTM step, dividing L and H; 1 = step by step "
                   "(preset: best 24, notes 1)")  # fmt: skip
    p.add_argument("--channel-independent", action=argparse.BooleanOptionalAction,
                   help="M only: one shared univariate model forecasts each channel from its "
                   "own past (preset: best on, notes off)")  # fmt: skip
    p.add_argument("--instance-norm", choices=("last", "none"),
                   help="subtract each window's last value and add it back to the forecast; "
                   "none = global normalisation only (preset: best last, notes none)")  # fmt: skip
    p.add_argument("--hidden", type=int, default=128, help="LSTM width")
    p.add_argument("--layers", type=int, default=2, help="encoder LSTM layers")
    p.add_argument("--teacher-forcing", type=float, default=0.3,
                   help="probability per decoder step of feeding the true previous value")  # fmt: skip
    p.add_argument("--loss", choices=("l1", "mse"),
                   help="training loss; early stopping always uses validation MSE "
                   "(preset: best l1, notes mse)")  # fmt: skip
    p.add_argument("--epochs", type=int, default=6, help="most epochs (early stopping on val)")
    p.add_argument("--batch-size", type=int, help="windows per step (preset: best 32, notes 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, halved per epoch")
    p.add_argument("--max-train-batches", type=int, default=0,
                   help="cap on batches per epoch, 0 = all (for seconds-long runs)")  # fmt: skip
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="no training: re-score this checkpoint.pt on the test windows and "
                   "forecast past the end of the file")  # fmt: skip
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    check_common_args(args)
    if args.channel_independent and args.features == "MS":
        raise UsageError("--channel-independent needs --features M or S (MS mixes channels)")
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.channel_independent = args.channel_independent and args.features == "M"
    if args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    for flag in ("window", "horizon", "hidden", "layers", "batch_size", "segment"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.window % args.segment or args.horizon % args.segment:
        raise UsageError(f"--segment {args.segment} must divide --window {args.window} and "
                         f"--horizon {args.horizon}")  # fmt: skip
    if not 0 <= args.teacher_forcing <= 1:
        raise UsageError("--teacher-forcing is a probability in [0, 1]")
    if args.lr <= 0 or args.max_train_batches < 0:
        raise UsageError("--lr must be > 0 and --max-train-batches >= 0")
    if args.checkpoint is not None and args.resume is not None:
        raise UsageError("--checkpoint re-scores a finished model; --resume continues training")
    return args


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


class AttentionDecoderCell(nn.Module):
    """One decoder step. alpha = softmax(W [h_{t-1}; y_{t-1}]) over the encoder outputs
    (Bahdanau et al. 2015, eq. 6, with the notes' fixed-length location score), context
    c_t = sum_j alpha_j h_j (eq. 5), then an LSTMCell on [c_t; y_{t-1}] carrying (h, c): the
    notes passed (h, h) and threw the cell state away."""

    def __init__(self, window: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.attention = nn.Linear(hidden + out_dim, window)
        self.cell = nn.LSTMCell(hidden + out_dim, hidden)
        self.head = nn.Linear(hidden, out_dim)

    def forward(self, encoder_out, state, y_prev):
        h, c = state
        weights = torch.softmax(self.attention(torch.cat((h, y_prev), dim=1)), dim=1)  # eq. 6
        context = torch.bmm(weights.unsqueeze(1), encoder_out).squeeze(1)  # eq. 5
        h, c = self.cell(torch.cat((context, y_prev), dim=1), (h, c))
        return self.head(h), (h, c)


class Seq2Seq(nn.Module):
    """LSTM encoder + attention LSTM decoder, rolled out one segment of S steps at a time.

    channel_independent: the C channels become C univariate series through one shared model
    ([B, L, C] -> [B*C, L, 1]), each forecast from its own past. segment S (SegRNN): the
    encoder reads L/S segments of S steps per LSTM step, attention runs over those L/S
    outputs, and each decoder step emits the next S steps. instance_norm 'last': x - x_L in,
    + x_L out (NLinear), which follows the level shift between ETT's train and test months."""

    def __init__(self, in_dim: int, out_channels: list[int], window: int, horizon: int,
                 hidden: int = 128, layers: int = 2, dropout: float = DROPOUT,
                 teacher_forcing: float = 0.3, instance_norm: str | None = None,
                 channel_independent: bool = False, segment: int = 1) -> None:  # fmt: skip
        super().__init__()
        if window % segment or horizon % segment:
            raise ValueError(f"segment {segment} must divide window {window} and horizon {horizon}")
        if channel_independent and list(out_channels) != list(range(in_dim)):
            raise ValueError("channel_independent forecasts every input channel (features M)")
        self.channel_independent = channel_independent
        if channel_independent:
            in_dim, out_channels = 1, [0]  # the shared model sees one series at a time
        self.out_channels, self.horizon, self.segment = list(out_channels), horizon, segment
        self.teacher_forcing, self.instance_norm = teacher_forcing, instance_norm
        self.register_buffer("out_index", torch.tensor(self.out_channels), persistent=False)
        self.encoder = nn.LSTM(in_dim * segment, hidden, num_layers=layers, batch_first=True,
                               dropout=dropout if layers > 1 else 0.0)  # fmt: skip
        self.decoder = AttentionDecoderCell(window // segment, hidden, len(out_channels) * segment)

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, C] (target [B, H, out] for teacher forcing) -> forecast [B, H, out]."""
        if not self.channel_independent:
            return self._rollout(x, target)
        b, _, c = x.shape

        def series(t: torch.Tensor) -> torch.Tensor:  # [B, T, C] -> [B*C, T, 1]
            return t.transpose(1, 2).reshape(b * c, t.shape[1], 1)

        pred = self._rollout(series(x), None if target is None else series(target))
        return pred.reshape(b, c, self.horizon).transpose(1, 2)

    def _rollout(self, x: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        if self.instance_norm == "last":
            level = x[:, -1:, :]
            x, out_level = x - level, level.index_select(2, self.out_index)
            target = None if target is None else target - out_level
        s = self.segment

        def segments(t: torch.Tensor) -> torch.Tensor:  # [B, T, K] -> [B, T/S, S*K]
            return t.reshape(t.shape[0], t.shape[1] // s, s * t.shape[2])

        encoder_out, (h_n, c_n) = self.encoder(segments(x))
        state = (h_n[-1], c_n[-1])  # the top layer's final (h, c) seeds the decoder
        y_prev = segments(x[:, -s:].index_select(2, self.out_index))[:, 0]  # last input segment
        steps = self.horizon // s
        # Teacher forcing in training only: evaluation never sees the truth.
        use_truth = self.training and target is not None and self.teacher_forcing > 0
        if use_truth:
            target = segments(target)
            coins = (torch.rand(steps) < self.teacher_forcing).tolist()
        outputs = []
        for t in range(steps):
            if use_truth and t > 0 and coins[t]:
                y_prev = target[:, t - 1]  # the TRUE previous value (the notes fed y_t itself)
            y_prev, state = self.decoder(encoder_out, state, y_prev)
            outputs.append(y_prev)
        pred = torch.stack(outputs, dim=1).reshape(x.shape[0], self.horizon, -1)
        return pred + out_level if self.instance_norm == "last" else pred


def build_model(args, data: ETTData) -> Seq2Seq:
    return Seq2Seq(len(data.columns), data.out_channels, args.window, args.horizon, args.hidden,
                   args.layers, DROPOUT, args.teacher_forcing,
                   None if args.instance_norm == "none" else args.instance_norm,
                   args.channel_independent, args.segment)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


@dataclass
class Windows:
    x: torch.Tensor  # [N, L, C]
    y: torch.Tensor  # [N, H, out]

    def __len__(self) -> int:
        return len(self.x)


def build_windows(split: Split, data: ETTData, window: int, horizon: int, device) -> Windows:
    x, y, _, _ = make_windows(split, window, 0, horizon)
    return Windows(x.contiguous().to(device), y[:, :, data.out_channels].contiguous().to(device))


@torch.no_grad()
def predict_windows(model: Seq2Seq, windows: Windows) -> torch.Tensor:
    model.eval()
    preds = [model(windows.x[i : i + EVAL_BATCH]) for i in range(0, len(windows), EVAL_BATCH)]
    return torch.cat(preds).cpu()


def persistence_forecast(x: torch.Tensor, horizon: int, out_channels: list[int]) -> torch.Tensor:
    """The last observed value repeated over the horizon: [B, L, C] -> [B, H, out]."""
    return x[:, -1:, out_channels].expand(-1, horizon, -1)


def score(pred: np.ndarray, true: np.ndarray, data: ETTData) -> dict:
    """MSE/MAE on the normalised scale over windows x steps x channels (the literature's
    metric), the target column alone (normalised and in original units) and MAE per step."""
    err = pred.astype(np.float64) - true.astype(np.float64)
    out = {"mse": float(np.mean(err**2)), "mae": float(np.mean(np.abs(err)))}
    if data.target_channel in data.out_channels:
        e = err[..., data.out_channels.index(data.target_channel)]
        std = float(data.scaler.std[data.target_channel])  # affine scaler: errors scale by std
        out.update(target_mse=float(np.mean(e**2)), target_mae=float(np.mean(np.abs(e))))
        out.update(target_mse_orig=out["target_mse"] * std**2,
                   target_mae_orig=out["target_mae"] * std)  # fmt: skip
    out["mae_per_step"] = np.mean(np.abs(err), axis=(0, 2)).tolist()
    return out


def evaluate_test(model, data: ETTData, args, device, run_dir: Path) -> dict:
    test = build_windows(data.test, data, args.window, args.horizon, device)
    pred, true = predict_windows(model, test).numpy(), test.y.cpu().numpy()
    np.save(run_dir / "pred.npy", pred)
    np.save(run_dir / "true.npy", true)
    metrics = score(pred, true, data)
    base = score(persistence_forecast(test.x, args.horizon, data.out_channels).cpu().numpy(),
                 true, data)  # fmt: skip
    metrics["persistence"] = {k: v for k, v in base.items() if k != "mae_per_step"}
    metrics["n_test_windows"] = len(test)
    print(f"test ({len(test)} windows, H={args.horizon}, {args.features}): MSE "
          f"{metrics['mse']:.4f} MAE {metrics['mae']:.4f} | persistence MSE {base['mse']:.4f} "
          f"MAE {base['mae']:.4f}", flush=True)  # fmt: skip
    if data.target_channel in data.out_channels:
        plot_windows(pred, true, data, args.window, run_dir / "test_target.png")
    return metrics


def units(data: ETTData) -> str:
    """ETT's OT is the oil temperature in °C; the load columns come without stated units."""
    return "°C" if data.target == "OT" else "file units"


def plot_loss_curves(history: list[dict], path: Path, loss: str) -> None:
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    name = {"l1": "MAE", "mse": "MSE"}[loss]
    ax.plot(
        epochs, [h["train_loss"] for h in history], "o-", label=f"train {name} (teacher forcing)"
    )
    ax.plot(epochs, [h["val_mse"] for h in history], "s-", label="validation MSE")
    ax.set(xlabel="epoch", ylabel="error (normalised units; MSE in units²)",
           title="seq2seq_etth: loss per epoch")  # fmt: skip
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_windows(pred, true, data: ETTData, window: int, path: Path, n_full: int = 3) -> None:
    """The target in original units: the first forecast step of every test window against the
    truth (top) and a few whole windows with their inputs (bottom)."""
    import matplotlib.pyplot as plt

    k, ch, split = data.out_channels.index(data.target_channel), data.target_channel, data.test
    orig = lambda v: v * data.scaler.std[ch] + data.scaler.mean[ch]  # noqa: E731
    ylabel = f"{data.target} ({units(data)})"
    fig = plt.figure(figsize=(13, 7))
    grid = fig.add_gridspec(2, n_full)
    top = fig.add_subplot(grid[0, :])
    dates = split.dates[window : window + len(pred)]
    top.plot(dates, orig(true[:, 0, k]), lw=0.8, label="truth")
    top.plot(dates, orig(pred[:, 0, k]), lw=0.8, label="forecast, first step")
    top.set(title=f"test period: {data.target}, first forecast step of every window",
            xlabel="date", ylabel=ylabel)  # fmt: skip
    top.legend()
    top.grid(alpha=0.3)
    horizon = pred.shape[1]
    for j, i in enumerate(np.linspace(0, len(pred) - 1, n_full).astype(int)):
        ax = fig.add_subplot(grid[1, j])
        ax.plot(np.arange(-window + 1, 1), orig(split.values[i : i + window, ch]), color="gray",
                lw=0.8, label="input")  # fmt: skip
        ax.plot(np.arange(1, horizon + 1), orig(true[i, :, k]), lw=1.0, label="truth")
        ax.plot(np.arange(1, horizon + 1), orig(pred[i, :, k]), lw=1.5, ls="--", label="forecast")
        ax.set(title=f"window starting {split.dates[i + window]:%Y-%m-%d %H:%M}",
               xlabel=f"step after the forecast start ({data.freq})", ylabel=ylabel)  # fmt: skip
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def forecast_rows(model: Seq2Seq, rows: np.ndarray, data: ETTData, device) -> np.ndarray:
    """Forecasts after each window of original-unit rows [B, L, C], in original units."""
    model.eval()
    x = torch.from_numpy(data.scaler.transform(rows).astype(np.float32)).to(device)
    pred = model(x).cpu().numpy()
    return pred * data.scaler.std[data.out_channels] + data.scaler.mean[data.out_channels]


def forecast_future(model, data: ETTData, args, device, run_dir: Path) -> None:
    """The notes' 'predict': the `horizon` steps after the last row of the file."""
    import matplotlib.pyplot as plt

    values = numeric_block(data.raw, data.columns, Path(args.data))
    dates = pd.DatetimeIndex(data.raw["date"])
    pred = forecast_rows(model, values[None, -args.window :], data, device)[0]
    step = pd.tseries.frequencies.to_offset(data.freq)
    future = pd.date_range(start=dates[-1] + step, periods=args.horizon, freq=step)
    frame = pd.DataFrame({"date": future})
    for k, ch in enumerate(data.out_channels):
        frame[f"forecast_{data.columns[ch]}"] = pred[:, k]
    frame.to_csv(run_dir / "forecast.csv", index=False)
    if data.target_channel not in data.out_channels:
        return
    fig, ax = plt.subplots(figsize=(11, 4))
    n_hist = 4 * args.window
    ax.plot(dates[-n_hist:], values[-n_hist:, data.target_channel], label="history")
    ax.plot(future, pred[:, data.out_channels.index(data.target_channel)], "o-", ms=2,
            label=f"forecast ({args.horizon} steps)")  # fmt: skip
    ax.set(title=f"{data.target}: forecast past the end of {Path(args.data).name}",
           xlabel="date", ylabel=f"{data.target} ({units(data)})")  # fmt: skip
    ax.legend()
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(run_dir / "forecast.png", dpi=110)
    plt.close(fig)


def rolling_forecast(model, data: ETTData, args, device, run_dir: Path) -> None:
    """The notes' rolling predict: forecast `horizon` steps, append the actual values, forecast
    again, over the rows after the test period (ETTh1: 3020 rows the benchmark leaves unused)
    or, when nothing follows it, over the test period."""
    import matplotlib.pyplot as plt

    values = numeric_block(data.raw, data.columns, Path(args.data))
    dates = pd.DatetimeIndex(data.raw["date"])
    start = data.borders["test"][1]
    if len(values) - start < args.horizon:
        start = data.borders["test"][0] + args.window
    ends = list(range(start, len(values), args.horizon))  # first row of each forecast
    pred = forecast_rows(model, np.stack([values[e - args.window : e] for e in ends]), data, device)
    pred = pred.reshape(-1, len(data.out_channels))[: len(values) - start]
    frame = pd.DataFrame({"date": dates[start:]})
    for j, col in enumerate(data.columns):
        frame[col] = values[start:, j]
    for k, ch in enumerate(data.out_channels):
        frame[f"forecast_{data.columns[ch]}"] = pred[:, k]
    frame.to_csv(run_dir / "rolling_forecast.csv", index=False)
    if data.target_channel not in data.out_channels:
        return
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.plot(frame["date"], frame[data.target], lw=0.8, label="actual")
    ax.plot(frame["date"], frame[f"forecast_{data.target}"], lw=0.8, label="rolling forecast")
    ax.set(title=f"rolling forecast of {data.target}, {args.horizon} steps at a time, "
           f"from file row {start}", xlabel="date", ylabel=f"{data.target} ({units(data)})")  # fmt: skip
    ax.legend()
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(run_dir / "rolling_forecast.png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Train
# ----------------------------------------------------------------------------------------------


def train_one_epoch(model, optimizer, train: Windows, args, epoch: int, generator) -> float:
    """One pass in a shuffled order drawn from `generator` (checkpointed with the run)."""
    model.train()
    order = torch.randperm(len(train), generator=generator).to(train.x.device)
    n_batches = -(-len(train) // args.batch_size)
    if args.max_train_batches:
        n_batches = min(n_batches, args.max_train_batches)
    total, seen = 0.0, 0
    progress = Progress(n_batches, desc=f"epoch {epoch}")
    for b in range(n_batches):
        idx = order[b * args.batch_size : (b + 1) * args.batch_size]
        x, y = train.x[idx], train.y[idx]
        pred = model(x, target=y)
        # The absolute error (the MAE the literature reports) trained better than the squared
        # error here, even when judged by validation MSE (docs/seq2seq_etth.md).
        loss = F.l1_loss(pred, y) if args.loss == "l1" else F.mse_loss(pred, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        total, seen = total + loss.item() * len(x), seen + len(x)
        progress.update(1, f"train {args.loss} {total / seen:.4f}")
    progress.close()
    return total / seen


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ckpt = None
    if args.resume is not None:  # the run's own settings win; only where it runs may change
        ckpt = load_checkpoint(args.resume, version=CHECKPOINT_VERSION)
        keep = {k: getattr(args, k) for k in ("device", "threads", "resume")}
        vars(args).update({**ckpt["args"], **keep})
    elif args.checkpoint is not None:  # the model comes from the checkpoint
        ckpt = load_checkpoint(args.checkpoint, version=CHECKPOINT_VERSION, flag="--checkpoint")
        vars(args).update({k: ckpt["args"][k] for k in MODEL_KEYS})
    run_dir = resolve_run_dir(args)
    set_threads(args.threads)
    device = pick_device(args.device)
    seed_everything(args.seed)
    data = load_ett(args.data_root, args.data, args.features, args.target, args.window)
    model = build_model(args, data).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    config = {k: v for k, v in vars(args).items() if k not in ("resume", "checkpoint")}
    config.update(columns=data.columns, out_channels=data.out_channels, freq=data.freq,
                  n_params=n_params, device_used=str(device),
                  **{f"{k}_rows": list(v) for k, v in data.borders.items()})  # fmt: skip
    if args.checkpoint is not None:
        if ckpt["columns"] != data.columns:
            raise UsageError(f"--checkpoint {args.checkpoint} was trained on columns "
                             f"{ckpt['columns']}, this data gives {data.columns}")  # fmt: skip
        open_run_dir(run_dir, {**config, "checkpoint": str(args.checkpoint)}, resume=False,
                     overwrite=args.overwrite)  # fmt: skip
        model.load_state_dict(ckpt["best_model"])
        metrics = evaluate_test(model, data, args, device, run_dir)
        write_json(run_dir / "metrics.json", {**metrics, "checkpoint": str(args.checkpoint)})
        forecast_future(model, data, args, device, run_dir)
        rolling_forecast(model, data, args, device, run_dir)
        return

    train = build_windows(data.train, data, args.window, args.horizon, device)
    val = build_windows(data.val, data, args.window, args.horizon, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=LR_DECAY)
    generator = torch.Generator().manual_seed(args.seed)  # batch order
    state = {"epoch": 0, "best_val": float("inf"), "best_epoch": 0, "bad_epochs": 0,
             "history": [], "train_seconds": 0.0}  # fmt: skip
    best_model = {k: v.clone() for k, v in model.state_dict().items()}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["generator"])
        set_rng_state(ckpt["rng"])
        best_model, state = ckpt["best_model"], ckpt["state"]
        print(f"resuming {run_dir} after epoch {state['epoch']}", flush=True)
    open_run_dir(run_dir, config, resume=ckpt is not None, overwrite=args.overwrite)
    print(f"run {run_dir} | {device} | {data.columns} -> "
          f"{[data.columns[c] for c in data.out_channels]} | {n_params} parameters | windows: "
          f"train {len(train)}, val {len(val)}", flush=True)  # fmt: skip

    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        if state["bad_epochs"] >= PATIENCE:
            break
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss = train_one_epoch(model, optimizer, train, args, epoch, generator)
        scheduler.step()
        val_mse = F.mse_loss(predict_windows(model, val), val.y.cpu()).item()
        seconds = time.perf_counter() - t0
        if val_mse < state["best_val"]:  # early stopping keeps the best validation weights
            state.update(best_val=val_mse, best_epoch=epoch, bad_epochs=0)
            best_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            state["bad_epochs"] += 1
        row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "val_mse": val_mse,
               "best_val": state["best_val"], "seconds": seconds}  # fmt: skip
        state["history"].append(row)
        state["epoch"], state["train_seconds"] = epoch, state["train_seconds"] + seconds
        append_jsonl(run_dir / "log.jsonl", row)
        print(f"epoch {epoch}/{args.epochs} train {train_loss:.4f} val {val_mse:.4f} (best "
              f"{state['best_val']:.4f} @ {state['best_epoch']}) lr {lr:.2e} {seconds:.1f}s",
              flush=True)  # fmt: skip
        save_checkpoint(run_dir / "checkpoint.pt", {
            "args": {k: v for k, v in vars(args).items() if k not in ("resume", "checkpoint")},
            "model": model.state_dict(), "best_model": best_model,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(), "state": state, "columns": data.columns,
        }, version=CHECKPOINT_VERSION)  # fmt: skip

    model.load_state_dict(best_model)
    metrics = evaluate_test(model, data, args, device, run_dir)
    history = state["history"]
    metrics.update(best_epoch=state["best_epoch"], best_val_mse=state["best_val"],
                   epochs_run=len(history), train_seconds=state["train_seconds"],
                   seconds_per_epoch=state["train_seconds"] / max(1, len(history)),
                   n_params=n_params)  # fmt: skip
    write_json(run_dir / "metrics.json", metrics)
    plot_loss_curves(history, run_dir / "loss_curves.png", args.loss)
    forecast_future(model, data, args, device, run_dir)
    rolling_forecast(model, data, args, device, run_dir)
    print(f"done: {run_dir} ({state['train_seconds']:.0f} s of training)", flush=True)


if __name__ == "__main__":
    sys.exit(run_cli(main))
