"""Seq2seq forecasting of ETT (Electricity Transformer Temperature) with an LSTM encoder and an
attention LSTM decoder, on the standard Informer/Autoformer benchmark protocol.

Work in progress: this commit holds the shared ETT data API (loading, benchmark split,
train-only scaler, time features, sliding windows) that autoformer_decomp.py imports.

Data: Zhou et al., "Informer: Beyond Efficient Transformer for Long Sequence Time-Series
Forecasting", AAAI 2021 (the ETT dataset and its 12/4/4-month split).
"""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

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
