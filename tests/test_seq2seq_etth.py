"""Tests for seq2seq_etth.py: the shared ETT data API (split borders, scaler, time features,
windows, error messages), the model, the persistence baseline and a smoke run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_tiny_ett

import seq2seq_etth as s2s

# ----------------------------------------------------------------------------------------------
# Data API
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seq_len", [96, 64])
def test_standard_borders_and_window_counts(tiny_ett_root: Path, seq_len: int) -> None:
    data = s2s.load_ett(tiny_ett_root, "ETTh1", "M", seq_len=seq_len)
    assert data.borders == {
        "train": (0, 8640),
        "val": (8640 - seq_len, 11520),
        "test": (11520 - seq_len, 14400),
    }
    assert data.freq == "h"
    assert data.test.start == 11520 - seq_len and len(data.test) == 2880 + seq_len
    for horizon in (24, 96, 720):
        x, y, x_mark, y_mark = s2s.make_windows(data.test, seq_len, 48, horizon)
        # Every test window is scored: 2880 - horizon + 1 (no drop_last).
        assert x.shape == (2880 - horizon + 1, seq_len, 7)
        assert y.shape == (2880 - horizon + 1, 48 + horizon, 7)
        assert x_mark.shape == (2880 - horizon + 1, seq_len, 4)
        assert y_mark.shape == (2880 - horizon + 1, 48 + horizon, 4)
    x, _, _, _ = s2s.make_windows(data.val, seq_len, 0, 24)
    assert len(x) == 2880 - 24 + 1


def test_minute_borders_are_four_times_hourly(tmp_path: Path) -> None:
    csv = write_tiny_ett(tmp_path / "m.csv", n_rows=57600, freq="15min")
    data = s2s.load_ett(tmp_path, str(csv), "S", seq_len=96)
    assert data.freq == "15min"
    assert data.borders == {"train": (0, 34560), "val": (34464, 46080), "test": (45984, 57600)}
    assert data.train.marks.shape == (34560, 5)


def test_columns_target_last_and_out_channels(tmp_path: Path) -> None:
    frame = pd.read_csv(write_tiny_ett(tmp_path / "a.csv", n_rows=200))
    frame = frame[["date", "OT", "HUFL", "HULL"]]  # target first in the file
    frame.to_csv(tmp_path / "b.csv", index=False)
    for features, out in (("M", [0, 1, 2]), ("MS", [2]), ("S", [0])):
        data = s2s.load_ett(tmp_path, str(tmp_path / "b.csv"), features, seq_len=8, split="notes")
        assert data.columns[-1] == "OT" and data.target_channel == len(data.columns) - 1
        assert data.out_channels == out
    assert data.columns == ["OT"]


def test_scaler_fitted_on_train_rows_only(tiny_ett_root: Path) -> None:
    data = s2s.load_ett(tiny_ett_root, "ETTh1", "M", seq_len=96)
    raw = data.raw[data.columns].to_numpy(np.float64)
    np.testing.assert_allclose(data.scaler.mean, raw[:8640].mean(0))
    np.testing.assert_allclose(data.scaler.std, raw[:8640].std(0))
    np.testing.assert_allclose(data.train.values.mean(0), 0, atol=1e-5)
    # The fixture has an upward trend, so the test period is NOT zero-mean under the train fit.
    assert np.all(data.test.values.mean(0) > 0.05)
    np.testing.assert_allclose(
        data.test.values,
        (raw[11424:14400] - raw[:8640].mean(0)) / raw[:8640].std(0),
        rtol=1e-5,
        atol=1e-5,
    )


def test_inverse_transform_round_trip() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3, 5, size=(100, 4))
    scaler = s2s.StandardScaler().fit(x)
    z = scaler.transform(x)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-12)
    np.testing.assert_allclose(scaler.inverse_transform(z), x, atol=1e-10)
    batch = rng.normal(size=(5, 7, 4))  # [..., C]
    np.testing.assert_allclose(scaler.transform(scaler.inverse_transform(batch)), batch, atol=1e-10)


def test_time_features_values() -> None:
    dates = pd.DatetimeIndex(["2016-01-01 00:00", "2016-12-31 23:45"])  # Fri; Sat, leap year
    hourly = s2s.time_features(dates, "h")
    np.testing.assert_allclose(
        hourly,
        [[-0.5, 4 / 6 - 0.5, -0.5, -0.5], [0.5, 5 / 6 - 0.5, 0.5, 365 / 365 - 0.5]],
        atol=1e-6,
    )
    minute = s2s.time_features(dates, "15min")
    assert minute.dtype == np.float32 and minute.shape == (2, 5)
    np.testing.assert_allclose(minute[:, 0], [-0.5, 45 / 59 - 0.5], atol=1e-6)
    np.testing.assert_allclose(minute[:, 1:], hourly, atol=1e-6)


def test_windows_match_rows(tiny_ett_root: Path) -> None:
    data = s2s.load_ett(tiny_ett_root, "ETTh1", "M", seq_len=16, split="notes")
    x, y, x_mark, y_mark = s2s.make_windows(data.val, 16, 8, 5)
    rows, marks = data.val.values, data.val.marks
    assert len(x) == len(rows) - 16 - 5 + 1
    for i in (0, 7, len(x) - 1):
        np.testing.assert_array_equal(x[i].numpy(), rows[i : i + 16])
        np.testing.assert_array_equal(y[i].numpy(), rows[i + 8 : i + 21])
        np.testing.assert_array_equal(x_mark[i].numpy(), marks[i : i + 16])
        np.testing.assert_array_equal(y_mark[i].numpy(), marks[i + 8 : i + 21])
    assert x.dtype == y.dtype == x_mark.dtype == y_mark.dtype == torch.float32


def test_notes_split_is_time_ordered(tiny_ett_root: Path) -> None:
    data = s2s.load_ett(tiny_ett_root, "ETTh1", "M", seq_len=64, split="notes")
    assert data.borders == {"train": (0, 10080), "val": (10016, 12240), "test": (12176, 14400)}


def _write(tmp_path: Path, frame: pd.DataFrame) -> str:
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: f.drop(columns=["OT"]), "no target column 'OT'"),
        (lambda f: f.drop(columns=["date"]), "no 'date' column"),
        (lambda f: f.assign(HULL=["x"] + list(f["HULL"].iloc[1:])), "column 'HULL' is not numeric"),
        (lambda f: f.iloc[:5000], "at least 14400 rows"),
    ],
)
def test_bad_csv_errors(tmp_path: Path, mutate, message: str) -> None:
    frame = pd.read_csv(write_tiny_ett(tmp_path / "ok.csv", n_rows=14400))
    path = _write(tmp_path, mutate(frame))
    with pytest.raises(SystemExit, match=message):
        s2s.load_ett(tmp_path, path, "M", seq_len=96)


def test_missing_file_names_file_and_folder(tmp_path: Path, monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(s2s.urllib.request, "urlopen", no_network)
    with pytest.raises(SystemExit) as info:
        s2s.resolve_data_path(tmp_path, "ETTh2")
    assert "ETTh2.csv" in str(info.value) and str(tmp_path / "ETT-small") in str(info.value)
    with pytest.raises(SystemExit, match="not found"):
        s2s.resolve_data_path(tmp_path, str(tmp_path / "nope.csv"))


@pytest.mark.realdata
def test_real_etth1_split(real_ett_root: Path) -> None:
    data = s2s.load_ett(real_ett_root, "ETTh1", "M", seq_len=96)
    assert data.columns == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    assert len(data.raw) == 17420
    assert data.test.dates[96] == pd.Timestamp("2017-10-24 00:00:00")  # first scored test row
    x, _, _, _ = s2s.make_windows(data.test, 96, 0, 96)
    assert len(x) == 2785
