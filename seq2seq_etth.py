"""Seq2seq forecasting of ETT (Electricity Transformer Temperature) with an LSTM encoder and an
attention LSTM decoder, on the standard Informer/Autoformer benchmark protocol.

The model (from the source notes, fixed): a 2-layer LSTM encoder reads the input window; an
attention decoder cell scores every encoder step from [previous hidden state, previous output]
(Bahdanau et al., "Neural Machine Translation by Jointly Learning to Align and Translate", ICLR
2015, Sec. 3.1, in the location-based form of the PyTorch seq2seq tutorial), an LSTMCell carries
hidden AND cell state across the horizon, and a linear head emits one step at a time, fed back
as the next input (teacher forcing with probability 0.3 during training only).

Data and protocol: Zhou et al., "Informer: Beyond Efficient Transformer for Long Sequence
Time-Series Forecasting", AAAI 2021 (the ETT dataset; 12/4/4-month train/val/test split; scaler
fitted on train; MSE/MAE on the normalised scale over every test window, horizon step and
channel). By default (`--instance-norm last`) each input window's last value is subtracted and
added back to the forecast, the trick of NLinear (Zeng et al., "Are Transformers Effective for
Time Series Forecasting?", AAAI 2023) and RevIN (Kim et al., ICLR 2022) against the train/test
distribution shift; `--instance-norm none` is the notes' globally normalised model.

Full run (ETTh1, 7 -> 7 channels, input 96, horizon 96):
    python seq2seq_etth.py
    python seq2seq_etth.py --instance-norm none       # the notes' model, no per-window shift
    python seq2seq_etth.py --features S --horizon 24  # univariate OT
    # the most accurate and fastest setting measured (H=96: MSE 0.385, about 1 min of training):
    # one shared model per channel, 24 time steps per LSTM step (SegRNN's segments)
    python seq2seq_etth.py --channel-independent --segment 24
Quick run (about 30 s on 2 CPU cores):
    python seq2seq_etth.py --epochs 1 --max-train-batches 20 --horizon 24
Re-score / forecast from a checkpoint:
    python seq2seq_etth.py --eval-only --checkpoint outputs/seq2seq_etth/RUN/checkpoint.pt
    python seq2seq_etth.py --predict-only --checkpoint outputs/seq2seq_etth/RUN/checkpoint.pt

Writes outputs/seq2seq_etth/<run-name>/: config.json, log.jsonl, metrics.json (mse, mae,
target-column mse/mae in original units, per-step MAE, persistence baseline), pred.npy and
true.npy (test windows x horizon x channels, normalised), checkpoint.pt, loss_curves.png,
test_target.png, inspect_fit.png, forecast.csv/forecast.png (the `horizon` steps after the end
of the file), rolling_forecast.csv/rolling_forecast.png.

The ETT data API below (load_ett, make_windows, ...) is shared: autoformer_decomp.py imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

# ----------------------------------------------------------------------------------------------
# Data: the shared ETT API (autoformer_decomp.py imports these names; add, never change)
# ----------------------------------------------------------------------------------------------

ETT_NAMES = ("ETTh1", "ETTh2", "ETTm1", "ETTm2")
ETT_URL = "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/{name}.csv"

# Informer's split (Zhou et al. 2021, Sec. 5.1): 12 months train, 4 validation, 4 test, with
# 30-day months of hourly rows. The 15-minute files use the same months, 4x the rows.
HOURLY_BORDERS = (12 * 30 * 24, 16 * 30 * 24, 20 * 30 * 24)  # (8640, 11520, 14400)
ROWS_PER_HOUR = {"h": 1, "15min": 4}


def resolve_data_path(data_root: str | Path, data: str) -> Path:
    """'ETTh1' -> <data_root>/ETT-small/ETTh1.csv (downloaded from the ETDataset repository when
    missing; on failure SystemExit naming the file and folder); any other value is a CSV path."""
    if data not in ETT_NAMES:
        path = Path(data)
        if not path.is_file():
            raise SystemExit(
                f"error: CSV file {path} not found (--data takes one of "
                f"{', '.join(ETT_NAMES)} or the path of a CSV with a date column)"
            )
        return path
    folder = Path(data_root) / "ETT-small"
    path = folder / f"{data}.csv"
    if path.is_file():
        return path
    url = ETT_URL.format(name=data)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        print(f"{path} missing; downloading {url}")
        with urllib.request.urlopen(url, timeout=30) as response:
            payload = response.read()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    except Exception as exc:  # no network, read-only folder, HTTP error: all end the same way
        raise SystemExit(
            f"error: {data}.csv not found in {folder} and the download from {url} failed "
            f"({exc}). Put {data}.csv (from the ETDataset repository, ETT-small/) in {folder}, "
            f"or pass --data-root pointing at the folder that holds ETT-small/."
        ) from None
    return path


class StandardScaler:
    """Per-channel z-score. Fit on TRAIN rows only: fitting on the whole file (as the notes did)
    leaks the test period's mean and spread into the inputs."""

    def __init__(self) -> None:
        self.mean = np.zeros(1, dtype=np.float64)
        self.std = np.ones(1, dtype=np.float64)

    def fit(self, x: np.ndarray) -> StandardScaler:
        x = np.asarray(x, dtype=np.float64)
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)  # population std (ddof=0), as sklearn's scaler used by Informer
        self.std = np.where(std > 0, std, 1.0)  # a constant column stays finite
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x) - self.mean) / self.std

    def inverse_transform(self, x: np.ndarray) -> np.ndarray:
        """Works on [..., C] arrays with C = the fitted channels."""
        return np.asarray(x) * self.std + self.mean


def time_features(dates: pd.DatetimeIndex, freq: str) -> np.ndarray:
    """Informer/Autoformer 'timeF' features scaled to [-0.5, 0.5], float32 [T, F]:
    hourly: hour, day of week, day of month, day of year (F=4); 15-min: minute too (F=5).
    Order as in Informer's time_features: minute (sub-hourly only), hour, weekday, day, yearday."""
    dates = pd.DatetimeIndex(dates)
    columns = [
        dates.hour / 23.0 - 0.5,
        dates.day_of_week / 6.0 - 0.5,
        (dates.day - 1) / 30.0 - 0.5,
        (dates.day_of_year - 1) / 365.0 - 0.5,
    ]
    if freq != "h" and not freq.endswith("h"):  # sub-hourly data: the minute matters too
        columns.insert(0, dates.minute / 59.0 - 0.5)
    return np.stack([np.asarray(c, dtype=np.float32) for c in columns], axis=1)


@dataclass
class Split:
    values: np.ndarray  # float32 [T, C], normalised with the train-fitted scaler
    marks: np.ndarray  # float32 [T, F], time_features of the rows
    dates: pd.DatetimeIndex  # [T]
    start: int  # row index of values[0] in the file (for plots/CSV output)

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class ETTData:
    columns: list[str]  # loaded columns in order (M/MS: all numeric, target LAST; S: [target])
    target: str
    target_channel: int  # index of the target in `columns` (always the last: C-1)
    out_channels: list[int]  # predicted and scored channels: M: all C; S: [0]; MS: [C-1]
    scaler: StandardScaler  # fitted on train rows of `columns` only
    freq: str  # "h" or "15min" (inferred from the dates)
    borders: dict[str, tuple[int, int]]  # file row ranges actually used, lookback included
    train: Split
    val: Split
    test: Split
    raw: pd.DataFrame  # the whole file, original units (for forecasting past its end)


def infer_freq(dates: pd.DatetimeIndex) -> str:
    """'h' for hourly rows, '15min' for quarter-hourly; other spacings as '<minutes>min'."""
    if len(dates) < 2:
        raise SystemExit("error: the CSV needs at least two rows to infer its time step")
    step = pd.Series(dates).diff().dropna().median()
    minutes = int(round(step / pd.Timedelta(minutes=1)))
    if minutes == 60:
        return "h"
    if minutes <= 0:
        raise SystemExit("error: the date column is not increasing in time")
    return f"{minutes}min"


def read_ett_csv(path: Path) -> pd.DataFrame:
    """Read a CSV with a 'date' column; the date is parsed, everything else left as read."""
    try:
        frame = pd.read_csv(path)
    except Exception as exc:
        raise SystemExit(f"error: cannot read {path} as CSV ({exc})") from None
    date_cols = [c for c in frame.columns if str(c).strip().lower() == "date"]
    if not date_cols:
        raise SystemExit(f"error: {path} has no 'date' column (columns: {list(frame.columns)})")
    frame = frame.rename(columns={date_cols[0]: "date"})
    try:
        frame["date"] = pd.to_datetime(frame["date"])
    except Exception as exc:
        raise SystemExit(f"error: {path}: cannot parse the 'date' column ({exc})") from None
    return frame


def numeric_block(frame: pd.DataFrame, columns: list[str], path: Path | str) -> np.ndarray:
    """The given columns as float64 [T, C]; non-numeric or missing values -> clear error."""
    out = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, col in enumerate(columns):
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if len(bad):
            raise SystemExit(
                f"error: {path}: column '{col}' is not numeric or has missing values "
                f"(first bad row {bad[0] + 2} of the file: {frame[col].iloc[bad[0]]!r}); "
                f"every column except 'date' must hold numbers"
            )
        out[:, j] = values.to_numpy(dtype=np.float64)
    return out


def split_borders(n_rows: int, freq: str, seq_len: int, split: str) -> dict[str, tuple[int, int]]:
    """File row ranges [start, end) of train/val/test, val and test starting L rows early so
    their first window's input is the L rows before the period (every period row is scored)."""
    if split == "standard":
        if freq not in ROWS_PER_HOUR:
            raise SystemExit(
                f"error: --split standard needs hourly or 15-minute rows (this file's step is "
                f"{freq}); use --split notes"
            )
        b_train, b_val, b_test = (b * ROWS_PER_HOUR[freq] for b in HOURLY_BORDERS)
        if n_rows < b_test:
            raise SystemExit(
                f"error: --split standard needs at least {b_test} rows (20 months), the file has "
                f"{n_rows}; use --split notes for a shorter series"
            )
    elif split == "notes":
        # The notes' 70/15/15 proportions, but in time order (train, val, test): the notes cut
        # validation and test from the START of the series, before the training rows.
        b_train = int(n_rows * 0.7)
        b_val = b_train + int(n_rows * 0.15)
        b_test = n_rows
    else:
        raise ValueError(f"unknown split {split!r} (standard | notes)")
    if b_train <= seq_len or b_val <= b_train or b_test <= b_val:
        raise SystemExit(
            f"error: too few rows ({n_rows}) for a {split} split with a {seq_len}-step input"
        )
    return {
        "train": (0, b_train),
        "val": (b_train - seq_len, b_val),
        "test": (b_val - seq_len, b_test),
    }


def load_ett(
    data_root: str | Path,
    data: str = "ETTh1",
    features: str = "M",
    target: str = "OT",
    seq_len: int = 96,
    split: str = "standard",
) -> ETTData:
    """split: 'standard' (Informer/Autoformer benchmark borders: train [0, 8640), val
    [8640-L, 11520), test [11520-L, 14400) hourly, x4 for 15-min) or 'notes' (70/15/15 in time
    order with the L-row lookback prefix on val/test). Clear errors: missing target column, no
    date column, non-numeric columns, too few rows for the split."""
    if features not in ("M", "S", "MS"):
        raise ValueError(f"features must be M, S or MS, got {features!r}")
    path = resolve_data_path(data_root, data)
    raw = read_ett_csv(path)
    if target not in raw.columns:
        others = [c for c in raw.columns if c != "date"]
        raise SystemExit(f"error: {path} has no target column '{target}' (columns: {others})")
    if features == "S":
        columns = [target]
    else:
        columns = [c for c in raw.columns if c not in ("date", target)] + [target]
    values = numeric_block(raw, columns, path)
    dates = pd.DatetimeIndex(raw["date"])
    freq = infer_freq(dates)
    borders = split_borders(len(raw), freq, seq_len, split)
    lo, hi = borders["train"]
    scaler = StandardScaler().fit(values[lo:hi])
    normalised = scaler.transform(values).astype(np.float32)
    marks = time_features(dates, freq)

    def make_split(name: str) -> Split:
        a, b = borders[name]
        return Split(values=normalised[a:b], marks=marks[a:b], dates=dates[a:b], start=a)

    n_channels = len(columns)
    out_channels = {"M": list(range(n_channels)), "S": [0], "MS": [n_channels - 1]}[features]
    return ETTData(
        columns=columns,
        target=target,
        target_channel=n_channels - 1,
        out_channels=out_channels,
        scaler=scaler,
        freq=freq,
        borders=borders,
        train=make_split("train"),
        val=make_split("val"),
        test=make_split("test"),
        raw=raw,
    )


def make_windows(
    split: Split, seq_len: int, label_len: int, horizon: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """All sliding windows of a split, in window order, as float32 tensors (views via unfold):
    x [N, seq_len, C], y [N, label_len + horizon, C], x_mark [N, seq_len, F],
    y_mark [N, label_len + horizon, F]; window i: x = rows[i : i+L],
    y = rows[i+L-label_len : i+L+H]; N = T - L - H + 1 (every window, no drop_last: the notes'
    drop_last on the test loader silently skipped windows). Targets: y[:, label_len:, out]."""
    if not 0 <= label_len <= seq_len:
        raise ValueError(f"label_len must be in [0, seq_len], got {label_len}")
    n_windows = len(split.values) - seq_len - horizon + 1
    if n_windows <= 0:
        raise SystemExit(
            f"error: a split of {len(split.values)} rows is too short for input {seq_len} + "
            f"horizon {horizon}"
        )
    values = torch.from_numpy(np.ascontiguousarray(split.values, dtype=np.float32))
    marks = torch.from_numpy(np.ascontiguousarray(split.marks, dtype=np.float32))
    y_len = label_len + horizon

    def windows(t: torch.Tensor, start: int, length: int) -> torch.Tensor:
        # unfold gives [N', C, length] views; transpose to [N', length, C], still a view.
        return t[start:].unfold(0, length, 1).transpose(1, 2)[:n_windows]

    y_start = seq_len - label_len
    return (
        windows(values, 0, seq_len),
        windows(values, y_start, y_len),
        windows(marks, 0, seq_len),
        windows(marks, y_start, y_len),
    )


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="LSTM encoder + attention LSTM decoder forecasting ETT (standard protocol)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # common flags
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", default="outputs")
    p.add_argument("--run-name", default=time.strftime("%Y%m%d-%H%M%S"))
    p.add_argument("--resume", default=None, help="checkpoint.pt to continue training from")
    # Informer's schedule (Zhou et al. 2021, App. E): 6 epochs, LR halved every epoch, early stop
    # with patience 3; after 6 halvings the LR is 1/64 of the start and little changes.
    p.add_argument("--epochs", type=int, default=6, help="max epochs (early stopping on val)")
    # data
    p.add_argument("--data", default="ETTh1", help=f"one of {', '.join(ETT_NAMES)} or a CSV path")
    p.add_argument(
        "--features",
        default="M",
        choices=["M", "S", "MS"],
        help="M: all -> all, S: target -> target, MS: all -> target",
    )
    p.add_argument("--target", default="OT")
    p.add_argument(
        "--split",
        default="standard",
        choices=["standard", "notes"],
        help="standard: Informer 12/4/4 months; notes: 70/15/15 (not the benchmark)",
    )
    p.add_argument("--window", type=int, default=96, help="input length L (the notes used 64)")
    p.add_argument("--horizon", type=int, default=96, help="forecast length H (notes: 24)")
    # model
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.05, help="between encoder LSTM layers")
    p.add_argument(
        "--teacher-forcing",
        type=float,
        default=0.3,
        help="probability per decoder step of feeding the true previous value (train only)",
    )
    p.add_argument(
        "--instance-norm",
        nargs="?",
        const="last",
        default="last",
        choices=["none", "last", "mean"],
        help="subtract each input window's last value (or mean), add it back after; 'none' is "
        "the notes' model (globally normalised only: 1.09 vs 0.43 test MSE at horizon 96, M)",
    )
    p.add_argument(
        "--channel-independent",
        action="store_true",
        help="M only: one shared univariate model forecasts every channel from its own past "
        "(the channels become extra batch rows, as in PatchTST / SegRNN); 7 -> 7 still",
    )
    p.add_argument(
        "--segment",
        type=int,
        default=1,
        metavar="S",
        help="steps per LSTM step: the encoder reads the window as L/S segments of S steps and "
        "the decoder emits S steps at a time (SegRNN's segment-wise iteration); 1 = one step at "
        "a time, as the notes. L and H must be multiples of S",
    )
    p.add_argument(
        "--time-features",
        action="store_true",
        help="also feed the timeF calendar features (encoder: input rows, decoder: "
        "the step being predicted)",
    )
    # optimisation
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--lr-decay",
        type=float,
        default=0.5,
        help="multiply the LR by this after every epoch (Informer's schedule)",
    )
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    p.add_argument("--patience", type=int, default=3, help="early-stopping patience (epochs)")
    p.add_argument(
        "--max-train-batches",
        type=int,
        default=0,
        help="cap batches per epoch (0 = all), for seconds-long smoke runs",
    )
    p.add_argument("--eval-batch-size", type=int, default=512)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0 = torch's default, the physical cores); 1 is "
        "faster when other jobs share the cores",
    )
    p.add_argument("--log-every", type=int, default=50, help="batches between plain progress lines")
    # modes
    p.add_argument("--eval-only", action="store_true", help="re-score --checkpoint on the test set")
    p.add_argument(
        "--predict-only",
        action="store_true",
        help="forecast past the end of the file (and rolling) from --checkpoint",
    )
    p.add_argument(
        "--checkpoint", default=None, help="checkpoint.pt for --eval-only/--predict-only"
    )
    p.add_argument(
        "--rolling-data",
        default=None,
        help="CSV continuing --data for the rolling forecast (same columns); default: "
        "the file's rows after the test period (or the test period itself)",
    )
    p.add_argument("--no-plots", action="store_true")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.window < 1 or args.horizon < 1:
        parser.error("--window and --horizon must be positive")
    if args.epochs < 0 or args.batch_size < 1 or args.hidden < 1 or args.layers < 1:
        parser.error("--epochs >= 0, --batch-size, --hidden and --layers >= 1")
    if not 0.0 <= args.teacher_forcing <= 1.0:
        parser.error("--teacher-forcing is a probability in [0, 1]")
    if not 0.0 < args.lr_decay <= 1.0:
        parser.error("--lr-decay must be in (0, 1]")
    if args.eval_only and args.predict_only:
        parser.error("--eval-only and --predict-only are exclusive")
    if (args.eval_only or args.predict_only) and not args.checkpoint:
        parser.error("--eval-only/--predict-only need --checkpoint PATH")
    if args.checkpoint and not (args.eval_only or args.predict_only):
        parser.error(
            "--checkpoint goes with --eval-only or --predict-only (use --resume to train on)"
        )
    if args.resume and (args.eval_only or args.predict_only):
        parser.error("--resume continues training; it cannot go with --eval-only/--predict-only")
    if args.data not in ETT_NAMES and not args.data.lower().endswith(".csv"):
        parser.error(f"--data takes one of {', '.join(ETT_NAMES)} or a path ending in .csv")
    if args.channel_independent and args.features != "M":
        parser.error("--channel-independent needs --features M (S has one channel; MS mixes them)")
    if args.segment < 1 or args.window % args.segment or args.horizon % args.segment:
        parser.error(
            f"--segment {args.segment} must be >= 1 and divide --window {args.window} and "
            f"--horizon {args.horizon}"
        )
    if args.instance_norm == "none":
        args.instance_norm = None  # the model (and checkpoints before this flag value) use None
    return args


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but CUDA is not available")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


class AttentionDecoderCell(nn.Module):
    """One decoder step. Attention weights over the L encoder outputs come from [previous
    hidden, previous output] (Bahdanau et al. 2015, Sec. 3.1, eqs. 5-6, with a fixed-length
    location score as in the notes); the LSTMCell reads [context, previous output (+ the step's
    time features)] and carries (h, c) - the notes passed (h, h) and threw the cell state away."""

    def __init__(self, window: int, hidden: int, out_dim: int, mark_dim: int = 0) -> None:
        super().__init__()
        self.attention = nn.Linear(hidden + out_dim, window)
        self.cell = nn.LSTMCell(hidden + out_dim + mark_dim, hidden)
        self.head = nn.Linear(hidden, out_dim)

    def forward(
        self,
        encoder_out: torch.Tensor,  # [B, L, H]
        state: tuple[torch.Tensor, torch.Tensor],  # (h, c), each [B, H]
        y_prev: torch.Tensor,  # [B, out_dim]
        mark: torch.Tensor | None = None,  # [B, F] time features of the step being predicted
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        h, c = state
        scores = self.attention(torch.cat((h, y_prev), dim=1))  # [B, L]
        weights = torch.softmax(scores, dim=1)  # alpha_tj, eq. 6
        # c_t = sum_j alpha_tj h_j (eq. 5): the attention-weighted encoder outputs.
        context = torch.bmm(weights.unsqueeze(1), encoder_out).squeeze(1)
        cell_in = [context, y_prev] if mark is None else [context, y_prev, mark]
        h, c = self.cell(torch.cat(cell_in, dim=1), (h, c))
        return self.head(h), (h, c)


class Seq2Seq(nn.Module):
    """LSTM encoder + attention LSTM decoder, rolled out one step (or segment) at a time.

    channel_independent: the C input channels (all of them forecast, out_channels = 0..C-1) are
    split into C univariate series that share one encoder/decoder: window [B, L, C] becomes
    C*B series [C*B, L, 1] and the forecasts are put back as [B, H, C]. Each channel is then
    predicted from its own past only, with C times the training series per batch.

    segment S > 1 (SegRNN, Lin et al. 2023, applied to this encoder-decoder): the encoder reads
    L/S segments of S steps (all channels) per LSTM step, attention runs over those L/S outputs,
    and each decoder step emits the next S steps; teacher forcing feeds a whole true segment. The
    recurrences get S times shorter (less to remember, fewer sequential steps)."""

    def __init__(
        self,
        in_dim: int,
        out_channels: list[int],
        window: int,
        horizon: int,
        hidden: int = 128,
        layers: int = 2,
        dropout: float = 0.05,
        teacher_forcing: float = 0.3,
        instance_norm: str | None = None,
        mark_dim: int = 0,
        channel_independent: bool = False,
        segment: int = 1,
    ) -> None:
        super().__init__()
        if window % segment or horizon % segment:
            raise ValueError(f"segment {segment} must divide window {window} and horizon {horizon}")
        if channel_independent and list(out_channels) != list(range(in_dim)):
            raise ValueError("channel_independent forecasts every input channel (features M)")
        self.channel_independent = channel_independent
        if channel_independent:
            in_dim, out_channels = 1, [0]  # the shared model sees one series at a time
        self.out_channels = list(out_channels)
        self.horizon = horizon
        self.segment = segment
        self.teacher_forcing = teacher_forcing
        self.instance_norm = instance_norm
        self.mark_dim = mark_dim
        self.register_buffer("out_index", torch.tensor(self.out_channels), persistent=False)
        self.encoder = nn.LSTM(
            (in_dim + mark_dim) * segment,
            hidden,
            num_layers=layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.decoder = AttentionDecoderCell(
            window // segment, hidden, len(self.out_channels) * segment, mark_dim * segment
        )

    def forward(
        self,
        x: torch.Tensor,  # [B, L, C]
        x_mark: torch.Tensor | None = None,  # [B, L, F]
        y_mark: torch.Tensor | None = None,  # [B, H, F] (future calendar, known in advance)
        target: torch.Tensor | None = None,  # [B, H, out] teacher-forcing values (train only)
    ) -> torch.Tensor:
        """Returns [B, H, len(out_channels)] on the input's (global-normalised) scale."""
        if not self.channel_independent:
            return self._rollout(x, x_mark, y_mark, target)
        b, window, c = x.shape

        def series(t: torch.Tensor) -> torch.Tensor:  # [B, T, C] -> [B*C, T, 1]
            return t.transpose(1, 2).reshape(b * c, t.shape[1], 1)

        def marks(t: torch.Tensor | None) -> torch.Tensor | None:  # row b*C + k: window b
            return t.repeat_interleave(c, 0) if self.mark_dim else t

        pred = self._rollout(
            series(x), marks(x_mark), marks(y_mark), None if target is None else series(target)
        )
        return pred.reshape(b, c, self.horizon).transpose(1, 2)  # [B, H, C]

    def _rollout(
        self,
        x: torch.Tensor,
        x_mark: torch.Tensor | None,
        y_mark: torch.Tensor | None,
        target: torch.Tensor | None,
    ) -> torch.Tensor:
        level = None
        if self.instance_norm == "last":
            level = x[:, -1:, :]
        elif self.instance_norm == "mean":
            level = x.mean(dim=1, keepdim=True)
        if level is not None:
            x = x - level
            out_level = level.index_select(2, self.out_index)  # [B, 1, out]
            if target is not None:
                target = target - out_level
        s = self.segment

        def segments(t: torch.Tensor) -> torch.Tensor:  # [B, T, K] -> [B, T/S, S*K], time-major
            return t.reshape(t.shape[0], t.shape[1] // s, s * t.shape[2])

        enc_in = x if not self.mark_dim else torch.cat((x, x_mark), dim=2)
        encoder_out, (h_n, c_n) = self.encoder(segments(enc_in))
        state = (h_n[-1], c_n[-1])  # the top layer's final (h, c) seeds the decoder
        y_prev = segments(x[:, -s:].index_select(2, self.out_index))[:, 0]  # last input segment
        if target is not None:
            target = segments(target)
        if self.mark_dim:
            y_mark = segments(y_mark)
        steps = self.horizon // s
        # Teacher forcing only in training mode and only with targets: eval never sees the truth.
        use_truth = self.training and target is not None and self.teacher_forcing > 0
        if use_truth:
            coins = (torch.rand(steps) < self.teacher_forcing).tolist()
        outputs = []
        for t in range(steps):
            if use_truth and t > 0 and coins[t]:
                # The TRUE previous value y_{t-1}; the notes fed y_t, the very step to predict.
                y_prev = target[:, t - 1]
            mark = y_mark[:, t] if self.mark_dim else None
            y_prev, state = self.decoder(encoder_out, state, y_prev, mark)
            outputs.append(y_prev)
        pred = torch.stack(outputs, dim=1).reshape(x.shape[0], self.horizon, -1)
        return pred if level is None else pred + out_level


def persistence_forecast(x: torch.Tensor, horizon: int, out_channels: list[int]) -> torch.Tensor:
    """Repeat the last observed value over the horizon: [B, L, C] -> [B, H, out]."""
    return x[:, -1:, out_channels].expand(-1, horizon, -1)


# ----------------------------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------------------------


@dataclass
class Windows:
    """One split's windows held as contiguous tensors on the training device."""

    x: torch.Tensor  # [N, L, C]
    y: torch.Tensor  # [N, H, out]
    x_mark: torch.Tensor  # [N, L, F]
    y_mark: torch.Tensor  # [N, H, F]

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, ...]:
        return self.x[index], self.y[index], self.x_mark[index], self.y_mark[index]


def build_windows(split: Split, data: ETTData, window: int, horizon: int, device) -> Windows:
    x, y, x_mark, y_mark = make_windows(split, window, 0, horizon)
    y = y[:, :, data.out_channels]
    return Windows(*(t.contiguous().to(device) for t in (x, y, x_mark, y_mark)))


@torch.no_grad()
def predict_windows(model: Seq2Seq, windows: Windows, batch_size: int) -> torch.Tensor:
    model.eval()
    preds = []
    for start in range(0, len(windows), batch_size):
        x, _, x_mark, y_mark = windows.batch(slice(start, start + batch_size))
        preds.append(model(x, x_mark, y_mark))
    return torch.cat(preds).cpu()


def error_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    err = pred.astype(np.float64) - true.astype(np.float64)
    return {"mse": float(np.mean(err**2)), "mae": float(np.mean(np.abs(err)))}


def score(pred: np.ndarray, true: np.ndarray, data: ETTData) -> dict:
    """The literature's metrics (normalised scale, all windows x steps x channels), plus the
    target column in original units and the per-step MAE."""
    out = error_metrics(pred, true)
    if data.target_channel in data.out_channels:
        k = data.out_channels.index(data.target_channel)
        std = float(data.scaler.std[data.target_channel])
        tgt = error_metrics(pred[..., k], true[..., k])
        # Original units: the scaler is affine, so errors scale by std (the mean cancels).
        out["target_mse_orig"] = tgt["mse"] * std**2
        out["target_mae_orig"] = tgt["mae"] * std
        out["target_mse"] = tgt["mse"]
        out["target_mae"] = tgt["mae"]
    out["mae_per_step"] = np.mean(np.abs(pred - true), axis=(0, 2)).astype(float).tolist()
    return out


def train_one_epoch(model, optimizer, train: Windows, args, epoch: int, generator) -> float:
    model.train()
    order = torch.randperm(len(train), generator=generator).to(train.x.device)
    n_batches = (len(train) + args.batch_size - 1) // args.batch_size
    if args.max_train_batches:
        n_batches = min(n_batches, args.max_train_batches)
    total, seen = 0.0, 0
    tty = sys.stderr.isatty()
    bar = tqdm(range(n_batches), desc=f"epoch {epoch}", disable=not tty, leave=False)
    for b in bar:
        x, y, x_mark, y_mark = train.batch(order[b * args.batch_size : (b + 1) * args.batch_size])
        pred = model(x, x_mark, y_mark, target=y)
        loss = F.mse_loss(pred, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        total += loss.item() * len(x)
        seen += len(x)
        if tty:
            bar.set_postfix(loss=f"{total / seen:.4f}")
        elif (b + 1) % args.log_every == 0:
            print(
                f"epoch {epoch} batch {b + 1}/{n_batches} train_loss {total / seen:.4f}", flush=True
            )
    return total / max(seen, 1)


# ----------------------------------------------------------------------------------------------
# Plots and forecasts
# ----------------------------------------------------------------------------------------------


def to_original(values: np.ndarray, data: ETTData, channel: int) -> np.ndarray:
    """Normalised values of one loaded channel -> original units."""
    return values * data.scaler.std[channel] + data.scaler.mean[channel]


def plot_loss_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train MSE (teacher forcing)")
    ax.plot(epochs, [h["val_mse"] for h in history], "s-", label="validation MSE")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (normalised)")
    ax.set_title("seq2seq_etth loss curves")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_windows(
    pred, true, data: ETTData, split: Split, window: int, title: str, path: Path, n_full: int = 3
) -> None:
    """Target column in original units: the first forecast step of every window against the
    truth (top), and a few whole windows (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = data.out_channels.index(data.target_channel)
    ch = data.target_channel
    first_dates = split.dates[window : window + len(pred)]
    fig = plt.figure(figsize=(13, 7))
    grid = fig.add_gridspec(2, n_full)
    top = fig.add_subplot(grid[0, :])
    top.plot(first_dates, to_original(true[:, 0, k], data, ch), lw=0.8, label="true")
    top.plot(first_dates, to_original(pred[:, 0, k], data, ch), lw=0.8, label="predicted (step 1)")
    top.set_title(f"{title}: {data.target}, first forecast step of every window")
    top.set_ylabel(data.target)
    top.legend()
    top.grid(alpha=0.3)
    horizon = pred.shape[1]
    picks = np.linspace(0, len(pred) - 1, n_full).astype(int)
    for j, i in enumerate(picks):
        ax = fig.add_subplot(grid[1, j])
        t_hist = np.arange(-window + 1, 1)
        t_fut = np.arange(1, horizon + 1)
        ax.plot(
            t_hist,
            to_original(split.values[i : i + window, ch], data, ch),
            color="gray",
            lw=0.8,
            label="input",
        )
        ax.plot(t_fut, to_original(true[i, :, k], data, ch), lw=1.0, label="truth")
        ax.plot(t_fut, to_original(pred[i, :, k], data, ch), lw=1.5, ls="--", label="forecast")
        ax.axvline(0.5, color="red", lw=0.8)
        ax.set_title(
            f"window {i} ({split.dates[i + window].strftime('%Y-%m-%d %H:%M')})", fontsize=9
        )
        ax.set_xlabel("step relative to forecast start")
        ax.grid(alpha=0.3)
        if j == 0:
            ax.set_ylabel(data.target)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def forecast_from_rows(
    model: Seq2Seq,
    rows: np.ndarray,
    dates: pd.DatetimeIndex,
    data: ETTData,
    window: int,
    horizon: int,
    device,
) -> np.ndarray:
    """Forecast `horizon` steps after each window of original-unit `rows` ([B, L, C]) whose
    last input dates are `dates` [B]; returns original units [B, H, out]."""
    model.eval()
    x = torch.from_numpy(data.scaler.transform(rows).astype(np.float32)).to(device)
    step = pd.tseries.frequencies.to_offset(data.freq)
    x_mark = y_mark = None
    if model.mark_dim:
        x_marks, y_marks = [], []
        for end in dates:
            past = pd.date_range(end=end, periods=window, freq=step)
            future = pd.date_range(start=end + step, periods=horizon, freq=step)
            x_marks.append(time_features(past, data.freq))
            y_marks.append(time_features(future, data.freq))
        x_mark = torch.from_numpy(np.stack(x_marks)).to(device)
        y_mark = torch.from_numpy(np.stack(y_marks)).to(device)
    pred = model(x, x_mark, y_mark).cpu().numpy()
    mean = data.scaler.mean[data.out_channels]
    std = data.scaler.std[data.out_channels]
    return pred * std + mean


def forecast_future(model, data: ETTData, args, device, run_dir: Path) -> pd.DataFrame:
    """Forecast the `horizon` steps after the last row of the file (the notes' 'predict')."""
    values = numeric_block(data.raw, data.columns, args.data)
    if len(values) < args.window:
        raise SystemExit(f"error: the file has fewer than --window={args.window} rows")
    dates = pd.DatetimeIndex(data.raw["date"])
    pred = forecast_from_rows(
        model, values[None, -args.window :], dates[-1:], data, args.window, args.horizon, device
    )[0]
    step = pd.tseries.frequencies.to_offset(data.freq)
    future = pd.date_range(start=dates[-1] + step, periods=args.horizon, freq=step)
    frame = pd.DataFrame({"date": future})
    for k, ch in enumerate(data.out_channels):
        frame[f"forecast_{data.columns[ch]}"] = pred[:, k]
    frame.to_csv(run_dir / "forecast.csv", index=False)
    if not args.no_plots:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        k = data.out_channels.index(data.target_channel)
        fig, ax = plt.subplots(figsize=(11, 4))
        n_hist = 4 * args.window
        ax.plot(dates[-n_hist:], values[-n_hist:, data.target_channel], label="history")
        ax.plot(future, pred[:, k], "o-", ms=2, label=f"forecast ({args.horizon} steps)")
        ax.axvline(dates[-1], color="red", lw=1)
        ax.set_title(f"{data.target}: forecast past the end of {Path(str(args.data)).name}")
        ax.set_ylabel(data.target)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(run_dir / "forecast.png", dpi=110)
        plt.close(fig)
    return frame


def rolling_forecast(model, data: ETTData, args, device, run_dir: Path) -> pd.DataFrame:
    """The notes' rolling predict: forecast `horizon` steps, append the actual values of those
    steps to the history, forecast again, until the evaluation rows run out. The rows come from
    --rolling-data (a CSV continuing the file) or else the file's rows after the test period
    (ETTh1: 3020 rows the benchmark leaves unused), or the test period when nothing follows."""
    base = numeric_block(data.raw, data.columns, args.data)
    base_dates = pd.DatetimeIndex(data.raw["date"])
    if args.rolling_data:
        extra_raw = read_ett_csv(Path(args.rolling_data))
        missing = [c for c in data.columns if c not in extra_raw.columns]
        if missing:
            raise SystemExit(f"error: {args.rolling_data} lacks columns {missing}")
        values = np.concatenate([base, numeric_block(extra_raw, data.columns, args.rolling_data)])
        dates = base_dates.append(pd.DatetimeIndex(extra_raw["date"]))
        start, source = len(base), str(args.rolling_data)
    else:
        values, dates = base, base_dates
        test_end = data.borders["test"][1]
        if len(base) - test_end >= args.horizon:
            start, source = test_end, f"rows {test_end}..{len(base)} after the test period"
        else:
            start = data.borders["test"][0] + args.window
            source = f"the test period (rows {start}..{len(base)})"
    ends = list(range(start, len(values), args.horizon))  # first row of each forecast block
    rows = np.stack([values[e - args.window : e] for e in ends])
    pred = forecast_from_rows(
        model, rows, dates[[e - 1 for e in ends]], data, args.window, args.horizon, device
    )
    pred = pred.reshape(-1, len(data.out_channels))[: len(values) - start]
    frame = pd.DataFrame({"date": dates[start:]})
    for j, col in enumerate(data.columns):
        frame[col] = values[start:, j]
    for k, ch in enumerate(data.out_channels):
        frame[f"forecast_{data.columns[ch]}"] = pred[:, k]
    frame.to_csv(run_dir / "rolling_forecast.csv", index=False)
    print(f"rolling forecast over {source}: {len(ends)} forecasts of {args.horizon} steps")
    if not args.no_plots:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(12, 4))
        n_hist = min(start, 4 * args.window)
        ax.plot(
            dates[start - n_hist : start],
            values[start - n_hist : start, data.target_channel],
            color="gray",
            label="past actual",
        )
        ax.plot(frame["date"], frame[data.target], label="actual")
        ax.plot(frame["date"], frame[f"forecast_{data.target}"], label="rolling forecast")
        ax.axvline(dates[start], color="blue", ls="--")
        ax.set_title(
            f"rolling forecast of {data.target}, {args.horizon} steps at a time ({source})"
        )
        ax.set_ylabel(data.target)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(run_dir / "rolling_forecast.png", dpi=110)
        plt.close(fig)
    return frame


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------

MODEL_KEYS = (
    "features",
    "target",
    "window",
    "horizon",
    "hidden",
    "layers",
    "dropout",
    "teacher_forcing",
    "instance_norm",
    "time_features",
    "channel_independent",
    "segment",
)
# What a checkpoint written before a model key existed meant by it.
MODEL_KEY_DEFAULTS = {"channel_independent": False, "segment": 1}


def build_model(args, data: ETTData) -> Seq2Seq:
    return Seq2Seq(
        in_dim=len(data.columns),
        out_channels=data.out_channels,
        window=args.window,
        horizon=args.horizon,
        hidden=args.hidden,
        layers=args.layers,
        dropout=args.dropout,
        teacher_forcing=args.teacher_forcing,
        instance_norm=args.instance_norm,
        mark_dim=data.train.marks.shape[1] if args.time_features else 0,
        channel_independent=args.channel_independent,
        segment=args.segment,
    )


def evaluate_test(model, data: ETTData, args, device, run_dir: Path) -> dict:
    test = build_windows(data.test, data, args.window, args.horizon, device)
    pred = predict_windows(model, test, args.eval_batch_size).numpy()
    true = test.y.cpu().numpy()
    np.save(run_dir / "pred.npy", pred)
    np.save(run_dir / "true.npy", true)
    metrics = score(pred, true, data)
    persistence = persistence_forecast(test.x, args.horizon, data.out_channels).cpu().numpy()
    base = score(persistence, true, data)
    metrics["persistence"] = {k: v for k, v in base.items() if k != "mae_per_step"}
    metrics["n_test_windows"] = len(test)
    print(
        f"test ({len(test)} windows, H={args.horizon}, {args.features}): "
        f"MSE {metrics['mse']:.4f} MAE {metrics['mae']:.4f} | persistence MSE "
        f"{base['mse']:.4f} MAE {base['mae']:.4f}"
    )
    if "target_mse_orig" in metrics:
        print(
            f"target {data.target} in original units: MSE {metrics['target_mse_orig']:.4f} "
            f"MAE {metrics['target_mae_orig']:.4f}"
        )
    if not args.no_plots and data.target_channel in data.out_channels:
        plot_windows(pred, true, data, data.test, args.window, "test", run_dir / "test_target.png")
    return metrics


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    ckpt = None
    ckpt_path = args.checkpoint or args.resume
    if ckpt_path:
        if not Path(ckpt_path).is_file():
            raise SystemExit(f"error: checkpoint {ckpt_path} not found")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        # The model's shape comes from the checkpoint, whatever the command line says.
        saved = {**MODEL_KEY_DEFAULTS, **ckpt["config"]}
        for key in MODEL_KEYS:
            setattr(args, key, saved[key])
    seed_everything(args.seed)
    if args.split == "notes":
        print(
            "NOTE: --split notes is the notes' 70/15/15 split, NOT the benchmark protocol; "
            "its numbers are not comparable with the literature"
        )
    data = load_ett(args.data_root, args.data, args.features, args.target, args.window, args.split)
    if ckpt is not None and ckpt.get("columns", data.columns) != data.columns:
        raise SystemExit(
            f"error: {ckpt_path} was trained on columns {ckpt['columns']}, but --data "
            f"{args.data} with --features {args.features} gives {data.columns}"
        )
    run_dir = Path(args.out) / Path(__file__).stem / args.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(args, data).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    config = {
        **vars(args),
        "device_used": str(device),
        "columns": data.columns,
        "out_channels": data.out_channels,
        "freq": data.freq,
        "borders": data.borders,
        "n_params": n_params,
        "scaler_mean": data.scaler.mean.tolist(),
        "scaler_std": data.scaler.std.tolist(),
        "torch_threads": torch.get_num_threads(),
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    print(
        f"run folder {run_dir} | device {device} | {data.columns} -> "
        f"{[data.columns[c] for c in data.out_channels]} | {n_params} parameters"
    )

    if args.eval_only or args.predict_only:
        model.load_state_dict(ckpt["best_model"])
        if args.eval_only:
            metrics = evaluate_test(model, data, args, device, run_dir)
            metrics["checkpoint"] = str(args.checkpoint)
            (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        else:
            forecast_future(model, data, args, device, run_dir)
            rolling_forecast(model, data, args, device, run_dir)
        return

    train = build_windows(data.train, data, args.window, args.horizon, device)
    val = build_windows(data.val, data, args.window, args.horizon, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=args.lr_decay)
    generator = torch.Generator().manual_seed(args.seed)  # batch order
    history: list[dict] = []
    start_epoch, best_val, best_epoch, bad_epochs = 1, float("inf"), 0, 0
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    train_seconds = 0.0
    log_path = run_dir / "log.jsonl"
    if ckpt is not None:  # --resume
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["rng"]["generator"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        np.random.set_state(ckpt["rng"]["numpy"])
        random.setstate(ckpt["rng"]["python"])
        best_state, best_val = ckpt["best_model"], ckpt["best_val"]
        best_epoch, bad_epochs = ckpt["best_epoch"], ckpt["bad_epochs"]
        history, train_seconds = ckpt["history"], ckpt["train_seconds"]
        start_epoch = ckpt["epoch"] + 1
        print(f"resumed from {args.resume} at epoch {start_epoch}")
    print(f"windows: train {len(train)}, val {len(val)}; borders {data.borders}")

    for epoch in range(start_epoch, args.epochs + 1):
        if bad_epochs >= args.patience:
            break
        t0 = time.time()
        lr = optimizer.param_groups[0]["lr"]
        train_loss = train_one_epoch(model, optimizer, train, args, epoch, generator)
        scheduler.step()
        val_pred = predict_windows(model, val, args.eval_batch_size)
        val_mse = F.mse_loss(val_pred, val.y.cpu()).item()
        train_seconds += time.time() - t0
        if val_mse < best_val:
            best_val, best_epoch, bad_epochs = val_mse, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        record = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train_loss,
            "val_mse": val_mse,
            "best_val": best_val,
            "seconds": time.time() - t0,
        }
        history.append(record)
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(
            f"epoch {epoch}/{args.epochs} train {train_loss:.4f} val {val_mse:.4f} "
            f"(best {best_val:.4f} @ {best_epoch}) lr {lr:.2e} {record['seconds']:.1f}s",
            flush=True,
        )
        atomic_save(
            {
                "model": model.state_dict(),
                "best_model": best_state,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "best_val": best_val,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "history": history,
                "train_seconds": train_seconds,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "numpy": np.random.get_state(),
                    "python": random.getstate(),
                    "generator": generator.get_state(),
                },
                "config": {k: getattr(args, k) for k in MODEL_KEYS},
                "columns": data.columns,
            },
            run_dir / "checkpoint.pt",
        )
        if bad_epochs >= args.patience:
            print(f"early stop: no validation improvement for {args.patience} epochs")

    # Early stopping restores the best validation weights before testing.
    model.load_state_dict(best_state)
    metrics = evaluate_test(model, data, args, device, run_dir)
    metrics.update(
        best_epoch=best_epoch,
        best_val_mse=best_val,
        epochs_run=len(history),
        train_seconds=train_seconds,
        split=args.split,
    )
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if not args.no_plots:
        if history:
            plot_loss_curves(history, run_dir / "loss_curves.png")
        if data.target_channel in data.out_channels:
            train_pred = predict_windows(model, train, args.eval_batch_size).numpy()
            plot_windows(
                train_pred,
                train.y.cpu().numpy(),
                data,
                data.train,
                args.window,
                "inspect fit (training data)",
                run_dir / "inspect_fit.png",
            )
    forecast_future(model, data, args, device, run_dir)
    rolling_forecast(model, data, args, device, run_dir)
    print(f"done: {run_dir} (train {train_seconds:.0f}s)")


if __name__ == "__main__":
    main()
