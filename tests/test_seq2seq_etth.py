"""Tests for seq2seq_etth.py: the shared ETT data API (split borders, scaler, time features,
windows, error messages), the model, the persistence baseline and a smoke run."""

from __future__ import annotations

import json
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
    marked = _model(out_channels, in_dim, mark_dim=4)
    assert marked(x, torch.randn(3, 12, 4), torch.randn(3, 5, 4)).shape == (3, 5, len(out_channels))


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


@pytest.mark.parametrize("mode", ["last", "mean"])
def test_instance_norm_is_shift_equivariant(mode: str) -> None:
    model = _model([6], instance_norm=mode).eval()
    x = torch.randn(3, 12, 7)
    shift = torch.randn(3, 1, 7) * 5
    with torch.no_grad():
        np.testing.assert_allclose(
            model(x + shift).numpy(), (model(x) + shift[:, :, 6:]).numpy(), atol=1e-4
        )
        plain = _model([6]).eval()
        assert not torch.allclose(plain(x + shift), plain(x) + shift[:, :, 6:], atol=1e-2)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [([], "last"), (["--instance-norm"], "last"), (["--instance-norm", "mean"], "mean"),
     (["--instance-norm", "none"], None)],
)  # fmt: skip
def test_instance_norm_flag_defaults_to_last_value(flags: list[str], expected) -> None:
    assert s2s.parse_args(flags).instance_norm == expected


@pytest.mark.parametrize("mark_dim", [0, 3])
def test_channel_independent_forecasts_each_channel_from_its_own_past(mark_dim: int) -> None:
    """Every output channel of the channel-independent model is the shared univariate model
    run on that channel alone, so changing one input channel moves only its own forecast."""
    model = _model(list(range(3)), in_dim=3, channel_independent=True, mark_dim=mark_dim)
    assert model.encoder.input_size == 1 + mark_dim
    model.eval()
    x = torch.randn(4, 12, 3)
    x_mark, y_mark = (torch.randn(4, 12, 3), torch.randn(4, 5, 3)) if mark_dim else (None, None)
    with torch.no_grad():
        pred = model(x, x_mark, y_mark)
        assert pred.shape == (4, 5, 3)
        for k in range(3):  # channel k alone, through the same weights
            alone = model._rollout(
                x[:, :, k : k + 1],
                x_mark,
                y_mark,
                None,
            )
            torch.testing.assert_close(pred[:, :, k], alone[:, :, 0])
        moved = x.clone()
        moved[:, :, 1] += torch.randn(4, 12)
        other = model(moved, x_mark, y_mark)
    torch.testing.assert_close(other[:, :, [0, 2]], pred[:, :, [0, 2]])
    assert not torch.allclose(other[:, :, 1], pred[:, :, 1])
    # teacher forcing routes each channel's own targets
    model.train()
    target = torch.randn(4, 5, 3)
    assert model(x, x_mark, y_mark, target=target).shape == (4, 5, 3)
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
# Command line
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--eval-only"],
        ["--eval-only", "--predict-only", "--checkpoint", "x.pt"],
        ["--checkpoint", "x.pt"],
        ["--teacher-forcing", "1.5"],
        ["--horizon", "0"],
        ["--data", "not_a_csv"],
        ["--channel-independent", "--features", "MS"],
        ["--channel-independent", "--features", "S"],
        ["--segment", "0"],
        ["--segment", "5"],  # does not divide 96
        ["--segment", "12", "--horizon", "30"],
    ],
)
def test_impossible_flags_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        s2s.parse_args(argv)
    assert info.value.code == 2


SMOKE = [
    "--epochs",
    "2",
    "--max-train-batches",
    "3",
    "--window",
    "24",
    "--horizon",
    "8",
    "--hidden",
    "16",
    "--batch-size",
    "16",
    "--seed",
    "1",
    "--threads",
    "1",
]


def test_smoke_run_eval_only_predict_only_and_resume(tiny_ett_root: Path, tmp_path: Path) -> None:
    from conftest import run_script

    common = ["--data-root", tiny_ett_root, "--out", tmp_path]
    proc = run_script("seq2seq_etth.py", *SMOKE, *common, "--run-name", "a", "--instance-norm")
    run = tmp_path / "seq2seq_etth" / "a"
    assert "persistence MSE" in proc.stdout
    for name in (
        "config.json",
        "metrics.json",
        "log.jsonl",
        "checkpoint.pt",
        "pred.npy",
        "true.npy",
        "loss_curves.png",
        "test_target.png",
        "inspect_fit.png",
        "forecast.csv",
        "forecast.png",
        "rolling_forecast.csv",
        "rolling_forecast.png",
    ):
        assert (run / name).is_file(), name
    pred, true = np.load(run / "pred.npy"), np.load(run / "true.npy")
    assert pred.shape == true.shape == (2880 - 8 + 1, 8, 7)
    metrics = json.loads((run / "metrics.json").read_text())
    np.testing.assert_allclose(
        metrics["mse"], np.mean((pred.astype(np.float64) - true) ** 2), rtol=1e-6
    )
    assert metrics["persistence"]["mse"] > 0 and metrics["n_test_windows"] == 2873
    assert len((run / "log.jsonl").read_text().splitlines()) == 2
    forecast = pd.read_csv(run / "forecast.csv")
    assert len(forecast) == 8 and pd.Timestamp(forecast["date"][0]) == pd.Timestamp(
        "2016-07-01"
    ) + pd.Timedelta(hours=14400)
    rolling = pd.read_csv(run / "rolling_forecast.csv")
    assert {"OT", "forecast_OT"} <= set(rolling.columns) and rolling["forecast_OT"].notna().all()

    # In-process from here (no interpreter start-up); torch's thread count is left alone.
    def main(*argv) -> None:
        s2s.main([str(x) for x in argv])

    in_process = SMOKE[: SMOKE.index("--threads")]

    # Re-scoring the checkpoint (its flags override the command line) reproduces the metrics.
    main(
        "--eval-only",
        "--checkpoint",
        run / "checkpoint.pt",
        *common,
        "--run-name",
        "b",
        "--horizon",
        "24",
        "--no-plots",
    )
    rescored = json.loads((tmp_path / "seq2seq_etth" / "b" / "metrics.json").read_text())
    np.testing.assert_allclose(rescored["mse"], metrics["mse"], rtol=1e-5)
    # A checkpoint from before --channel-independent existed still re-scores the same.
    old = torch.load(run / "checkpoint.pt", weights_only=False)
    del old["config"]["channel_independent"]
    torch.save(old, tmp_path / "old.pt")
    main(
        "--eval-only",
        "--checkpoint",
        tmp_path / "old.pt",
        *common,
        "--run-name",
        "b0",
        "--no-plots",
    )
    rescored = json.loads((tmp_path / "seq2seq_etth" / "b0" / "metrics.json").read_text())
    np.testing.assert_allclose(rescored["mse"], metrics["mse"], rtol=1e-5)

    # Predict-only reproduces the forecast; rolling over a second file continuing the first.
    extra = pd.read_csv(write_tiny_ett(tmp_path / "more.csv", n_rows=30, seed=3))
    extra["date"] = pd.date_range("2018-02-20", periods=30, freq="h").strftime("%Y-%m-%d %H:%M:%S")
    extra.to_csv(tmp_path / "more.csv", index=False)
    main(
        "--predict-only",
        "--checkpoint",
        run / "checkpoint.pt",
        *common,
        "--run-name",
        "c",
        "--rolling-data",
        tmp_path / "more.csv",
    )
    again = pd.read_csv(tmp_path / "seq2seq_etth" / "c" / "forecast.csv")
    np.testing.assert_allclose(again["forecast_OT"], forecast["forecast_OT"], rtol=1e-5)
    rolled = pd.read_csv(tmp_path / "seq2seq_etth" / "c" / "rolling_forecast.csv")
    assert len(rolled) == 30 and rolled["forecast_OT"].notna().all()  # 4 forecasts of 8 steps
    np.testing.assert_allclose(rolled["OT"], extra["OT"], rtol=1e-6)
    assert (tmp_path / "seq2seq_etth" / "c" / "rolling_forecast.png").is_file()

    # Resume: 1 epoch, then resume to 2, gives the same model as 2 epochs straight.
    one = [a if a != "2" else "1" for a in in_process]
    main(*one, *common, "--run-name", "d", "--instance-norm", "--no-plots")
    main(
        *in_process,
        *common,
        "--run-name",
        "e",
        "--instance-norm",
        "--no-plots",
        "--resume",
        tmp_path / "seq2seq_etth" / "d" / "checkpoint.pt",
    )
    resumed = json.loads((tmp_path / "seq2seq_etth" / "e" / "metrics.json").read_text())
    np.testing.assert_allclose(resumed["mse"], metrics["mse"], rtol=1e-5)


def test_missing_data_exits_with_message(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        s2s.main(["--data-root", str(tmp_path), "--data", str(tmp_path / "x.csv")])
    message = str(info.value.code)
    assert message.startswith("error:") and "x.csv" in message
