"""Tests for seq2seq_etth.py: the ETT data API (split borders, scaler, time features, windows,
column and file checks), the model, the persistence baseline, the default recipe, a smoke run
with checkpoint re-scoring, and kill-and-resume giving bit-identical weights."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT, run_script, write_tiny_ett

import seq2seq_etth as s2s

# A seconds-long run of the default recipe (tests/test_contract.py runs it too).
CONTRACT = {"tiny": ["--epochs", "1", "--max-train-batches", "3", "--hidden", "8"],
            "size_flag": "--epochs", "data": "ett"}  # fmt: skip

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
    assert data.test.start == 11520 - seq_len and len(data.test.values) == 2880 + seq_len
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
    frame = pd.read_csv(write_tiny_ett(tmp_path / "a.csv", n_rows=14400))
    frame = frame[["date", "OT", "HUFL", "HULL"]]  # target first in the file
    frame.to_csv(tmp_path / "b.csv", index=False)
    for features, out in (("M", [0, 1, 2]), ("MS", [2]), ("S", [0])):
        data = s2s.load_ett(tmp_path, str(tmp_path / "b.csv"), features, seq_len=8)
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
    data = s2s.load_ett(tiny_ett_root, "ETTh1", "M", seq_len=16)
    x, y, x_mark, y_mark = s2s.make_windows(data.val, 16, 8, 5)
    rows, marks = data.val.values, data.val.marks
    assert len(x) == len(rows) - 16 - 5 + 1
    for i in (0, 7, len(x) - 1):
        np.testing.assert_array_equal(x[i].numpy(), rows[i : i + 16])
        np.testing.assert_array_equal(y[i].numpy(), rows[i + 8 : i + 21])
        np.testing.assert_array_equal(x_mark[i].numpy(), marks[i : i + 16])
        np.testing.assert_array_equal(y_mark[i].numpy(), marks[i + 8 : i + 21])
    assert x.dtype == y.dtype == x_mark.dtype == y_mark.dtype == torch.float32


def _write(tmp_path: Path, frame: pd.DataFrame) -> str:
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: f.drop(columns=["OT"]), "lacks column(s) OT"),
        (lambda f: f.drop(columns=["date"]), "no 'date' column"),
        (lambda f: f.assign(HULL=["x"] + list(f["HULL"].iloc[1:])), "column 'HULL' is not numeric"),
        (lambda f: f.iloc[:5000], "the standard split needs 14400"),
    ],
)
def test_bad_csv_errors(tmp_path: Path, mutate, message: str) -> None:
    frame = pd.read_csv(write_tiny_ett(tmp_path / "ok.csv", n_rows=14400))
    path = _write(tmp_path, mutate(frame))
    with pytest.raises(s2s.RunError, match=message.replace("(", r"\(").replace(")", r"\)")):
        s2s.load_ett(tmp_path, path, "M", seq_len=96)


def test_named_ett_file_must_hold_the_columns_features_needs(tmp_path: Path) -> None:
    csv = write_tiny_ett(tmp_path / "ETT-small" / "ETTh1.csv")
    pd.read_csv(csv).drop(columns=["HULL"]).to_csv(csv, index=False)
    for features in ("M", "MS"):
        with pytest.raises(s2s.RunError, match=r"lacks column\(s\) HULL that --features"):
            s2s.load_ett(tmp_path, "ETTh1", features)
    assert s2s.load_ett(tmp_path, "ETTh1", "S").columns == ["OT"]  # S needs only the target
    # From the command line: exit 1, one line naming the column, no run folder.
    proc = run_script("seq2seq_etth.py", "--data-root", tmp_path, "--out", tmp_path / "out",
                      *CONTRACT["tiny"], cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "HULL" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_file_fails_after_the_download_and_leaves_no_folder(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(s2s.urllib.request, "urlopen", offline)
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(s2s.RunError, match="download .* failed") as info:
        s2s.resolve_data_path(root, "ETTh2")
    assert str(root / "ETT-small" / "ETTh2.csv") in str(info.value)
    assert list(root.iterdir()) == []  # the ETT-small folder made for the download is gone
    with pytest.raises(s2s.RunError, match="nope.csv is missing"):
        s2s.resolve_data_path(root, str(tmp_path / "nope.csv"))
    # `ln -s .../ETT-small data/ETT-small` into an existing folder makes ETT-small/ETT-small.
    (root / "ETT-small" / "ETT-small").mkdir(parents=True)
    with pytest.raises(s2s.RunError, match="inside an existing folder"):
        s2s.resolve_data_path(root, "ETTh1")


@pytest.mark.realdata
def test_real_etth1_split(real_ett_root: Path) -> None:
    data = s2s.load_ett(real_ett_root, "ETTh1", "M", seq_len=96)
    assert data.columns == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    assert len(data.raw) == 17420
    assert data.test.dates[96] == pd.Timestamp("2017-10-24 00:00:00")  # first scored test row
    x, _, _, _ = s2s.make_windows(data.test, 96, 0, 96)
    assert len(x) == 2785


# ----------------------------------------------------------------------------------------------
# Model, baseline, metrics
# ----------------------------------------------------------------------------------------------


def _model(out_channels, in_dim=7, **kwargs) -> s2s.Seq2Seq:
    torch.manual_seed(0)
    defaults = dict(window=12, horizon=5, hidden=16, layers=2, dropout=0.0)
    return s2s.Seq2Seq(in_dim, out_channels, **{**defaults, **kwargs})


@pytest.mark.parametrize(
    "in_dim, out_channels", [(7, list(range(7))), (1, [0]), (7, [6])], ids=["M", "S", "MS"]
)
def test_model_output_shapes(in_dim: int, out_channels: list[int]) -> None:
    model = _model(out_channels, in_dim)
    x = torch.randn(3, 12, in_dim)
    assert model(x).shape == (3, 5, len(out_channels))
    model.train()
    out = model(x, target=torch.randn(3, 5, len(out_channels)))
    assert out.shape == (3, 5, len(out_channels))


def test_no_teacher_forcing_in_eval_mode() -> None:
    model = _model(list(range(7)), teacher_forcing=1.0)
    x = torch.randn(4, 12, 7)
    target = torch.randn(4, 5, 7)
    model.eval()
    with torch.no_grad():
        free_run = model(x)
        np.testing.assert_array_equal(model(x, target=target).numpy(), free_run.numpy())
    model.train()  # dropout is 0, so train mode differs only by teacher forcing
    with torch.no_grad():
        forced = model(x, target=target)
    np.testing.assert_array_equal(forced[:, 0].numpy(), free_run[:, 0].numpy())
    assert not torch.allclose(forced[:, 1:], free_run[:, 1:])


def test_teacher_forcing_feeds_previous_true_value_not_current() -> None:
    model = _model(list(range(7)), teacher_forcing=1.0).train()
    x = torch.randn(2, 12, 7)
    target = torch.randn(2, 5, 7)
    with torch.no_grad():
        base = model(x, target=target)
        changed = target.clone()
        changed[:, 2] += 10.0  # the truth at step 2 may only influence steps 3, 4
        moved = model(x, target=changed)
    np.testing.assert_allclose(moved[:, :3].numpy(), base[:, :3].numpy(), atol=1e-6)
    assert not torch.allclose(moved[:, 3], base[:, 3])


def test_instance_norm_is_shift_equivariant() -> None:
    model = _model([6], instance_norm="last").eval()
    x = torch.randn(3, 12, 7)
    shift = torch.randn(3, 1, 7) * 5
    with torch.no_grad():
        np.testing.assert_allclose(
            model(x + shift).numpy(), (model(x) + shift[:, :, 6:]).numpy(), atol=1e-4
        )
        plain = _model([6]).eval()
        assert not torch.allclose(plain(x + shift), plain(x) + shift[:, :, 6:], atol=1e-2)


def test_channel_independent_forecasts_each_channel_from_its_own_past() -> None:
    """Every output channel of the channel-independent model is the shared univariate model
    run on that channel alone, so changing one input channel moves only its own forecast."""
    model = _model(list(range(3)), in_dim=3, channel_independent=True)
    assert model.encoder.input_size == 1
    model.eval()
    x = torch.randn(4, 12, 3)
    with torch.no_grad():
        pred = model(x)
        assert pred.shape == (4, 5, 3)
        for k in range(3):  # channel k alone, through the same weights
            alone = model._rollout(x[:, :, k : k + 1], None)
            torch.testing.assert_close(pred[:, :, k], alone[:, :, 0])
        moved = x.clone()
        moved[:, :, 1] += torch.randn(4, 12)
        other = model(moved)
    torch.testing.assert_close(other[:, :, [0, 2]], pred[:, :, [0, 2]])
    assert not torch.allclose(other[:, :, 1], pred[:, :, 1])
    # teacher forcing routes each channel's own targets
    model.train()
    target = torch.randn(4, 5, 3)
    assert model(x, target=target).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="every input channel"):
        _model([6], in_dim=7, channel_independent=True)


@pytest.mark.parametrize("channel_independent", [False, True])
def test_segments_shorten_the_recurrences_and_keep_the_output_layout(channel_independent) -> None:
    model = _model(
        list(range(3)), in_dim=3, horizon=6, segment=3, channel_independent=channel_independent
    )
    c = 1 if channel_independent else 3
    assert model.encoder.input_size == 3 * c  # one LSTM step reads 3 time steps
    assert model.decoder.attention.out_features == 4  # 12 / 3 encoder outputs to attend over
    assert model.decoder.head.out_features == 3 * c  # one decoder step emits 3 time steps
    x = torch.randn(2, 12, 3)
    model.eval()
    with torch.no_grad():
        pred = model(x)
        assert pred.shape == (2, 6, 3)
        # A step in the middle of a segment still reaches the forecast (it is read, not skipped).
        moved = x.clone()
        moved[:, 4, :] += 3.0
        assert not torch.allclose(model(moved), pred)
    with pytest.raises(ValueError, match="must divide"):
        _model([6], segment=5)


def test_segment_teacher_forcing_feeds_the_previous_true_segment() -> None:
    model = _model(list(range(7)), horizon=6, segment=2, teacher_forcing=1.0).train()
    x = torch.randn(2, 12, 7)
    target = torch.randn(2, 6, 7)
    with torch.no_grad():
        base = model(x, target=target)
        changed = target.clone()
        changed[:, 2:4] += 10.0  # the second true segment may only influence the third
        moved = model(x, target=changed)
        last = target.clone()
        last[:, 4:] += 10.0  # the last segment is never fed back
        np.testing.assert_array_equal(model(x, target=last).numpy(), base.numpy())
    np.testing.assert_allclose(moved[:, :4].numpy(), base[:, :4].numpy(), atol=1e-6)
    assert not torch.allclose(moved[:, 4:], base[:, 4:])


def test_persistence_baseline_on_hand_made_series() -> None:
    series = np.arange(20, dtype=np.float32)[:, None] * np.array([[1.0, -2.0]], dtype=np.float32)
    split = s2s.Split(
        series, np.zeros((20, 4), np.float32), pd.date_range("2020", periods=20, freq="h"), 0
    )
    x, y, _, _ = s2s.make_windows(split, 4, 0, 3)
    pred = s2s.persistence_forecast(x, 3, [0, 1])
    assert pred.shape == (14, 3, 2)
    np.testing.assert_array_equal(pred[0].numpy(), [[3, -6]] * 3)  # last input row is t=3
    # y_t - y_last = step (1, 2, 3) for channel 0 and -2 * step for channel 1.
    err = (pred - y).numpy()
    mse = np.mean(err**2)
    np.testing.assert_allclose(mse, np.mean([1, 4, 9, 4, 16, 36]), rtol=1e-6)
    np.testing.assert_array_equal(s2s.persistence_forecast(x, 3, [1])[5, :, 0].numpy(), [-16] * 3)


def test_score_original_units(tiny_ett_root: Path) -> None:
    data = s2s.load_ett(tiny_ett_root, "ETTh1", "M", seq_len=96)
    rng = np.random.default_rng(0)
    true = rng.normal(size=(10, 4, 7))
    pred = true + rng.normal(size=(10, 4, 7))
    metrics = s2s.score(pred, true, data)
    std = data.scaler.std[6]
    orig_err = (
        data.scaler.inverse_transform(pred)[..., 6] - data.scaler.inverse_transform(true)[..., 6]
    )
    np.testing.assert_allclose(metrics["target_mse_orig"], np.mean(orig_err**2), rtol=1e-9)
    np.testing.assert_allclose(metrics["target_mae_orig"], np.mean(np.abs(orig_err)), rtol=1e-9)
    np.testing.assert_allclose(metrics["mse"], np.mean((pred - true) ** 2))
    assert len(metrics["mae_per_step"]) == 4 and std > 0


# ----------------------------------------------------------------------------------------------
# Command line, default recipe, runs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["l1", "mse"])
def test_train_one_epoch_minimises_the_chosen_loss(loss) -> None:
    torch.manual_seed(0)
    model = s2s.Seq2Seq(1, [0], 8, 4, hidden=8, layers=1, teacher_forcing=0.0, segment=4)
    train = s2s.Windows(torch.randn(6, 8, 1), torch.randn(6, 4, 1))
    args = argparse.Namespace(batch_size=6, max_train_batches=0, loss=loss)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # no step: the loss is the start's
    model.train()
    with torch.no_grad():
        pred = model(train.x)
    expected = (pred - train.y).abs().mean() if loss == "l1" else ((pred - train.y) ** 2).mean()
    got = s2s.train_one_epoch(model, optimizer, train, args, 1, torch.Generator().manual_seed(0))
    assert got == pytest.approx(expected.item(), rel=1e-6)


def test_default_is_the_best_recipe_and_notes_preset_is_the_notes_model() -> None:
    a = s2s.parse_args([])
    got = (a.preset, a.features, a.window, a.horizon, a.segment, a.channel_independent,
           a.instance_norm, a.batch_size, a.hidden, a.layers, a.teacher_forcing, a.epochs, a.lr,
           a.threads, a.loss)  # fmt: skip
    assert got == ("best", "M", 96, 96, 24, True, "last", 32, 128, 2, 0.3, 6, 1e-3, 1, "l1")
    n = s2s.parse_args(["--preset", "notes"])
    got = (n.window, n.horizon, n.segment, n.channel_independent, n.instance_norm, n.batch_size,
           n.loss)  # fmt: skip
    assert got == (64, 24, 1, False, "none", 16, "mse")
    assert s2s.parse_args(["--preset", "notes", "--window", "96"]).window == 96
    assert s2s.parse_args(["--features", "MS"]).channel_independent is False
    assert s2s.parse_args(["--no-channel-independent"]).channel_independent is False


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--teacher-forcing", "1.5"], "--teacher-forcing"),
        (["--horizon", "0"], "--horizon"),
        (["--epochs", "0"], "--epochs"),
        (["--channel-independent", "--features", "MS"], "--channel-independent"),
        (["--segment", "5"], "--segment"),  # does not divide 96
        (["--preset", "notes", "--segment", "24"], "--segment"),  # 24 does not divide 64
        (["--checkpoint", "x.pt", "--resume", "y.pt"], "--resume"),
    ],
)
def test_impossible_flags_are_usage_errors(argv, flag, tmp_path, monkeypatch) -> None:
    (tmp_path / "y.pt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(s2s.UsageError, match=flag):
        s2s.parse_args(argv)


def test_smoke_run_rescore_and_forecasts(tiny_ett_root: Path, tmp_path: Path) -> None:
    common = ["--data-root", tiny_ett_root, "--out", tmp_path]
    tiny = ["--epochs", "2", "--max-train-batches", "3", "--hidden", "16", "--horizon", "48"]
    proc = run_script("seq2seq_etth.py", *tiny, *common, "--run-name", "a", "--seed", "1")
    run = tmp_path / "seq2seq_etth" / "a"
    assert "persistence MSE" in proc.stdout
    for name in ("config.json", "metrics.json", "log.jsonl", "checkpoint.pt", "pred.npy",
                 "true.npy", "loss_curves.png", "test_target.png", "forecast.csv",
                 "forecast.png", "rolling_forecast.csv", "rolling_forecast.png"):  # fmt: skip
        assert (run / name).is_file(), name
    pred, true = np.load(run / "pred.npy"), np.load(run / "true.npy")
    assert pred.shape == true.shape == (2880 - 48 + 1, 48, 7)
    metrics = json.loads((run / "metrics.json").read_text())
    mse = np.mean((pred.astype(np.float64) - true) ** 2)
    np.testing.assert_allclose(metrics["mse"], mse, rtol=1e-12)
    assert metrics["persistence"]["mse"] > 0 and metrics["n_test_windows"] == 2833
    assert metrics["epochs_run"] == 2 and len((run / "log.jsonl").read_text().splitlines()) == 2
    forecast = pd.read_csv(run / "forecast.csv")
    first = pd.Timestamp("2016-07-01") + pd.Timedelta(hours=14400)
    assert len(forecast) == 48 and pd.Timestamp(forecast["date"][0]) == first
    rolling = pd.read_csv(run / "rolling_forecast.csv")
    assert {"OT", "forecast_OT"} <= set(rolling.columns) and rolling["forecast_OT"].notna().all()
    # --checkpoint: the model's flags come from the checkpoint and the score is reproduced.
    s2s.main([str(x) for x in (*common, "--run-name", "b", "--horizon", "24", "--checkpoint",
                                run / "checkpoint.pt")])  # fmt: skip
    again = tmp_path / "seq2seq_etth" / "b"
    assert json.loads((again / "metrics.json").read_text())["mse"] == metrics["mse"]
    pd.testing.assert_frame_equal(pd.read_csv(again / "forecast.csv"), forecast)


def test_sigkill_after_the_first_checkpoint_then_resume_is_bit_identical(tiny_ett_root, tmp_path):
    """Teacher-forcing coins and dropout draw from the global RNG and the batch order from its
    own generator: all of them, the optimizer, the schedule and the early-stopping state must
    come back from the checkpoint for the resumed run to end on the same weights."""
    args = ["--data-root", tiny_ett_root, "--out", tmp_path, "--seed", "7", "--epochs", "4",
            "--max-train-batches", "40", "--hidden", "16"]  # fmt: skip
    run_script("seq2seq_etth.py", *args, "--run-name", "straight")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "seq2seq_etth.py"),
                             *map(str, args), "--run-name", "killed"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    ckpt = tmp_path / "seq2seq_etth" / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_log = (ckpt.parent / "log.jsonl").read_text().splitlines()
    assert 1 <= len(killed_log) < 4 and not (ckpt.parent / "metrics.json").exists()
    run_script("seq2seq_etth.py", "--resume", ckpt, "--threads", "1")
    a = torch.load(tmp_path / "seq2seq_etth" / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(ckpt, weights_only=False)
    for part in ("model", "best_model"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert a["state"]["best_epoch"] == b["state"]["best_epoch"]
    metrics = [json.loads((tmp_path / "seq2seq_etth" / r / "metrics.json").read_text())
               for r in ("straight", "killed")]  # fmt: skip
    assert metrics[0]["mse"] == metrics[1]["mse"]
