"""autoformer_decomp.py: series decomposition and Auto-Correlation against direct definitions,
the model, flags and presets, data checks, a smoke run, and kill-and-resume giving
bit-identical weights."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT, run_script, write_tiny_ett

import autoformer_decomp as af

# A seconds-long run (tests/test_contract.py runs it too).
CONTRACT = {"tiny": ["--epochs", "1", "--max-steps-per-epoch", "3", "--d-model", "16",
                     "--d-ff", "32"], "size_flag": "--epochs", "data": "ett"}  # fmt: skip

# --------------------------------------------------------------------------------------------
# Series decomposition (eq. 1)
# --------------------------------------------------------------------------------------------


def numpy_moving_average(x: np.ndarray, k: int) -> np.ndarray:
    """Direct definition: mean of x over [t - (k-1)//2, t + k-1-(k-1)//2], indices clamped
    to the series (= the first/last value repeated), for x [L, C]."""
    front = (k - 1) // 2
    out = np.empty_like(x)
    for t in range(len(x)):
        idx = np.clip(np.arange(t - front, t - front + k), 0, len(x) - 1)
        out[t] = x[idx].mean(axis=0)
    return out


@pytest.mark.parametrize("kernel", [1, 4, 5, 25, 30])
@pytest.mark.parametrize("length", [7, 96, 144])
def test_moving_average_matches_definition_and_keeps_length(kernel, length):
    x = torch.randn(3, length, 4, dtype=torch.float64)
    expected = np.stack([numpy_moving_average(s, kernel) for s in x.numpy()])
    seasonal, trend = af.SeriesDecomposition(kernel)(x)
    assert trend.shape == x.shape
    np.testing.assert_allclose(trend.numpy(), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(seasonal, x - trend, rtol=0, atol=0)


def test_decomposition_sums_back_and_constant_has_no_seasonal():
    decomp = af.SeriesDecomposition(25)
    x = torch.randn(4, 96, 7) * 3 + 5
    seasonal, trend = decomp(x)
    assert seasonal.shape == trend.shape == x.shape
    # seasonal = x - trend, so the sum is x up to one rounding of the subtraction
    torch.testing.assert_close(seasonal + trend, x, rtol=0, atol=4e-6)
    x64 = x.double()
    s64, t64 = decomp(x64)
    torch.testing.assert_close(s64 + t64, x64, rtol=0, atol=1e-13)

    const = torch.full((2, 96, 3), 2.5)
    seasonal, trend = decomp(const)
    torch.testing.assert_close(trend, const, rtol=0, atol=1e-6)
    assert seasonal.abs().max() < 1e-6


def test_sine_with_period_dividing_kernel_has_flat_trend():
    # Period 5 divides k = 25: every full window averages whole periods, so the trend is the
    # level (3.0) away from the ends, where the repeated end values break the periodicity.
    t = torch.arange(200, dtype=torch.float64)
    x = (3.0 + torch.sin(2 * math.pi * t / 5)).view(1, -1, 1)
    seasonal, trend = af.SeriesDecomposition(25)(x)
    inner = slice(12, 200 - 12)
    torch.testing.assert_close(trend[0, inner, 0], torch.full((176,), 3.0, dtype=torch.float64))
    torch.testing.assert_close(seasonal[0, inner, 0], x[0, inner, 0] - 3.0)
    # ...and not near the ends (so the padding really is end-value repetition, not periodic)
    assert (trend[0, :12, 0] - 3.0).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------
# Auto-Correlation (eqs. 5-6)
# --------------------------------------------------------------------------------------------


def test_mean_autocorrelation_matches_direct_sum():
    torch.manual_seed(0)
    q, k = torch.randn(2, 24, 6, dtype=torch.float64), torch.randn(2, 24, 6, dtype=torch.float64)
    corr = af.mean_autocorrelation(q, k)
    assert corr.shape == (2, 24)
    qn, kn = q.numpy(), k.numpy()
    for tau in range(24):
        direct = (np.roll(qn, -tau, axis=1) * kn).sum(axis=1).mean(-1)  # sum_t q[t+tau] k[t]
        np.testing.assert_allclose(corr[:, tau].numpy(), direct, atol=1e-10)


def test_top_delay_recovers_shift_and_period():
    torch.manual_seed(0)
    # q is k delayed by 7 steps: R(tau) = sum_t q[t+tau] k[t] peaks at tau = 7.
    k = torch.randn(1, 96, 8)
    _, delays = af.select_delays(af.mean_autocorrelation(torch.roll(k, 7, dims=1), k), 3, False)
    assert delays[0, 0].item() == 7
    # A period-24 signal in a 96-step window: the top four delays are the multiples of 24.
    t = torch.arange(96, dtype=torch.float32)
    periodic = torch.stack([torch.sin(2 * math.pi * t / 24 + p) for p in (0.0, 1.0, 2.0)], -1)
    periodic = periodic[None] + 0.05 * torch.randn(1, 96, 3)
    _, delays = af.select_delays(af.mean_autocorrelation(periodic, periodic), 4, False)
    assert sorted(delays[0].tolist()) == [0, 24, 48, 72]


def time_delay_aggregation_reference(values, weights, delays):
    """eq. 6 as it reads: sum_i w_i Roll(V, tau_i), one torch.roll per sample and delay."""
    out = torch.zeros_like(values)
    for b in range(values.shape[0]):
        for i in range(delays.shape[1]):
            out[b] += weights[b, i] * torch.roll(values[b], -int(delays[b, i]), dims=0)
    return out


@pytest.mark.parametrize("batch_shared", [True, False])
def test_vectorised_aggregation_equals_roll_reference(batch_shared):
    torch.manual_seed(1)
    corr = torch.randn(5, 30, dtype=torch.float64)
    weights, delays = af.select_delays(corr, 6, batch_shared)
    assert (delays == delays[:1]).all() == batch_shared  # per-sample delays really differ
    values = torch.randn(5, 30, 3, dtype=torch.float64, requires_grad=True)
    weights = weights.detach().requires_grad_(True)
    fast = af.time_delay_aggregation(values, weights, delays)
    slow = time_delay_aggregation_reference(values, weights, delays)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
    upstream = torch.randn_like(fast)
    grads_fast = torch.autograd.grad(fast, (values, weights), upstream)
    grads_slow = torch.autograd.grad(slow, (values, weights), upstream)
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_autocorrelation_shapes_and_per_sample_inference():
    torch.manual_seed(0)
    layer = af.AutoCorrelation(d_model=16, factor=3)
    x, cross = torch.randn(6, 20, 16), torch.randn(6, 12, 16)
    assert af.top_k_for(20, 3) == 8  # floor(3 ln 20) = floor(8.99)
    for mode in (True, False):
        layer.train(mode)
        assert layer(x, x, x).shape == (6, 20, 16)
        assert layer(x, cross, cross).shape == (6, 20, 16)  # shorter keys: zero-padded
        assert layer(cross, x, x).shape == (6, 12, 16)  # longer keys: cut
    layer.eval()  # inference: per-sample delays, a window's output ignores its batch
    with torch.no_grad():
        torch.testing.assert_close(layer(x, x, x)[:1], layer(x[:1], x[:1], x[:1]))


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def tiny_args(**overrides):
    args = af.parse_args(["--d-model", "16", "--d-ff", "32", "--horizon", "12", "--seq-len", "48"])
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


@pytest.mark.parametrize("c_in,out", [(7, list(range(7))), (1, [0]), (7, [6])])
def test_model_forward_backward(c_in, out):
    torch.manual_seed(0)
    model = af.Autoformer(c_in, 4, tiny_args())
    x, x_mark, y_mark = torch.randn(3, 48, c_in), torch.randn(3, 48, 4), torch.randn(3, 60, 4)
    forecast, seasonal, trend = model(x, x_mark, y_mark, components=True)
    assert forecast.shape == (3, 12, c_in)
    torch.testing.assert_close(forecast, seasonal + trend)  # final prediction = W_S X + T
    forecast[..., out].pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_bfloat16_autocast_training_step_and_float32_correlation():
    """Under bf16 autocast the matmuls run in bf16, but the FFT correlation stays float32 (and
    equals the float32 one), gradients reach every parameter and stay float32."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 24, 8), torch.randn(2, 24, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        corr = af.mean_autocorrelation(q.bfloat16(), k.bfloat16())
    assert corr.dtype == torch.float32
    torch.testing.assert_close(corr, af.mean_autocorrelation(q.bfloat16().float(),
                                                             k.bfloat16().float()))  # fmt: skip
    model = af.Autoformer(7, 4, tiny_args())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        forecast = model(torch.randn(3, 48, 7), torch.randn(3, 48, 4), torch.randn(3, 60, 4))
    forecast.float().pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_decoder_trend_starts_from_input_mean():
    # With every trend projection zeroed, the trend part of the forecast is the decoder's trend
    # input: the input's mean over the placeholder steps (Sec. 3.1).
    torch.manual_seed(0)
    model = af.Autoformer(7, 4, tiny_args()).eval()
    for layer in model.decoder:
        torch.nn.init.zeros_(layer.trend_projection.weight)
    x = torch.randn(2, 48, 7) + torch.arange(7.0)
    with torch.no_grad():
        _, _, trend = model(x, torch.randn(2, 48, 4), torch.randn(2, 60, 4), components=True)
    torch.testing.assert_close(trend, x.mean(1, keepdim=True).expand(-1, 12, -1))


# --------------------------------------------------------------------------------------------
# Flags, data checks, runs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, flag",
    [(["--d-model", "0"], "--d-model"), (["--seq-len", "24"], "--seq-len"),
     (["--horizon", "0"], "--horizon"), (["--epochs", "0"], "--epochs"),
     (["--dropout", "1"], "--dropout")],
)  # fmt: skip
def test_bad_flags_are_usage_errors(argv, flag):
    with pytest.raises(af.UsageError, match=flag):
        af.parse_args(argv)


def test_default_is_the_cpu_preset_and_flags_override_presets():
    d = af.parse_args([])
    got = (d.preset, d.d_model, d.e_layers, d.d_ff, d.dropout, d.factor, d.moving_avg,
           d.epochs, d.batch_size, d.lr, d.seq_len, d.horizon, d.threads)  # fmt: skip
    assert got == ("cpu", 128, 1, 512, 0.05, 3.0, 25, 10, 32, 1e-4, 96, 96, 1)
    assert af.D_LAYERS == 1
    paper = af.parse_args(["--preset", "paper", "--dropout", "0.1"])
    assert (paper.d_model, paper.d_ff, paper.e_layers) == (512, 2048, 2)
    assert paper.dropout == 0.1


def test_resolve_precision():
    cpu = torch.device("cpu")
    assert af.resolve_precision("float32", cpu) is None
    assert af.resolve_precision("bfloat16", cpu) is torch.bfloat16


def test_a_file_without_the_columns_features_needs_exits_1_naming_them(tmp_path):
    csv = write_tiny_ett(tmp_path / "ETT-small" / "ETTh1.csv")
    pd.read_csv(csv).drop(columns=["LULL", "MUFL"]).to_csv(csv, index=False)
    proc = run_script("autoformer_decomp.py", "--data-root", tmp_path, "--out", tmp_path / "o",
                      *CONTRACT["tiny"], cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "MUFL, LULL" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_smoke_run_files_and_metrics(tiny_ett_root, tmp_path):
    proc = run_script("autoformer_decomp.py", *CONTRACT["tiny"], "--horizon", "24",
                      "--precision", "bfloat16", "--data-root", tiny_ett_root, "--out", tmp_path,
                      "--run-name", "r")  # fmt: skip
    assert "epoch 1 3/3" in proc.stdout  # plain progress lines without a TTY
    run = tmp_path / "autoformer_decomp" / "r"
    for name in ("config.json", "metrics.json", "log.jsonl", "checkpoint.pt", "pred.npy",
                 "true.npy", "loss_curves.png", "test_window.png", "decomposition_OT.png",
                 "decomposition_channels.png"):  # fmt: skip
        assert (run / name).is_file(), name
    pred, true = np.load(run / "pred.npy"), np.load(run / "true.npy")
    assert pred.shape == true.shape == (2880 - 24 + 1, 24, 7)  # every test window
    metrics = json.loads((run / "metrics.json").read_text())
    np.testing.assert_allclose(metrics["test_mse"], ((pred - true) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["test_mae"], np.abs(pred - true).mean(), rtol=1e-5)
    assert json.loads((run / "config.json").read_text())["autocast"] == "bfloat16"


def test_sigkill_after_the_first_checkpoint_then_resume_is_bit_identical(tiny_ett_root, tmp_path):
    """The batch order and dropout draw from the global RNG; with it, the optimizer, the LR
    schedule and the early-stopping state restored, the resumed run ends on the same weights,
    and the paper's schedule holds across the kill (epochs 1-2 at 1e-4, then halved)."""
    args = ["--data-root", tiny_ett_root, "--out", tmp_path, "--seed", "3", "--epochs", "4",
            "--max-steps-per-epoch", "12", "--d-model", "16", "--d-ff", "32"]  # fmt: skip
    run_script("autoformer_decomp.py", *args, "--run-name", "straight")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "autoformer_decomp.py"),
                             *map(str, args), "--run-name", "killed"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    ckpt = tmp_path / "autoformer_decomp" / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1 <= len((ckpt.parent / "log.jsonl").read_text().splitlines()) < 4
    assert not (ckpt.parent / "metrics.json").exists()
    run_script("autoformer_decomp.py", "--resume", ckpt, "--threads", "1")
    a = torch.load(tmp_path / "autoformer_decomp" / "straight" / "checkpoint.pt",
                   weights_only=False)  # fmt: skip
    b = torch.load(ckpt, weights_only=False)
    for part in ("model", "best_model"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    log = [json.loads(line) for line in (ckpt.parent / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log] == pytest.approx([1e-4, 1e-4, 5e-5, 2.5e-5][: len(log)])
    metrics = [json.loads((tmp_path / "autoformer_decomp" / r / "metrics.json").read_text())
               for r in ("straight", "killed")]  # fmt: skip
    assert metrics[0]["test_mse"] == metrics[1]["test_mse"]


@pytest.mark.parametrize("features", ["M", "S"])  # S: a figure with one row
def test_decompose_only_writes_figures_and_exits(tiny_ett_root, tmp_path, capsys, features):
    af.main(["--decompose-only", "--data-root", str(tiny_ett_root), "--out", str(tmp_path),
             "--run-name", "d", "--features", features])  # fmt: skip
    run = tmp_path / "autoformer_decomp" / "d"
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json", "decomposition_OT.png", "decomposition_channels.png"]  # fmt: skip
    assert "wrote" in capsys.readouterr().out


@pytest.mark.realdata
def test_real_etth1_decomposition(real_ett_root, tmp_path):
    af.main(["--decompose-only", "--data-root", str(real_ett_root), "--out", str(tmp_path),
             "--run-name", "real"])  # fmt: skip
    assert (tmp_path / "autoformer_decomp" / "real" / "decomposition_channels.png").is_file()
