"""autoformer_decomp.py: series decomposition, Auto-Correlation, the model, and a smoke run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import run_script

import autoformer_decomp as af

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
    for impl in (af.moving_average, af.moving_average_pool):
        trend = impl(x, kernel)
        assert trend.shape == x.shape
        np.testing.assert_allclose(trend.numpy(), expected, rtol=0, atol=1e-12)


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
    for groups in (1, 3):
        corr = af.mean_autocorrelation(q, k, groups)
        assert corr.shape == (2, groups, 24)
        qn, kn = q.numpy(), k.numpy()
        for tau in range(24):
            direct = (np.roll(qn, -tau, axis=1) * kn).sum(axis=1)  # sum_t q[t+tau] k[t]
            direct = direct.reshape(2, groups, -1).mean(-1)
            np.testing.assert_allclose(corr[:, :, tau].numpy(), direct, atol=1e-10)


def test_top_delay_recovers_shift_and_period():
    torch.manual_seed(0)
    # q is k delayed by 7 steps: R(tau) = sum_t q[t+tau] k[t] peaks at tau = 7.
    k = torch.randn(1, 96, 8)
    q = torch.roll(k, 7, dims=1)
    corr = af.mean_autocorrelation(q, k, 1)
    _, delays = af.select_delays(corr, 3, batch_shared=False)
    assert delays[0, 0, 0].item() == 7

    # A period-24 signal in a 96-step window: the top four delays are the multiples of 24.
    t = torch.arange(96, dtype=torch.float32)
    periodic = torch.stack([torch.sin(2 * math.pi * t / 24 + p) for p in (0.0, 1.0, 2.0)], -1)
    periodic = periodic[None] + 0.05 * torch.randn(1, 96, 3)
    corr = af.mean_autocorrelation(periodic, periodic, 1)
    _, delays = af.select_delays(corr, 4, batch_shared=False)
    assert sorted(delays[0, 0].tolist()) == [0, 24, 48, 72]


@pytest.mark.parametrize("batch_shared", [True, False])
@pytest.mark.parametrize("groups", [1, 4])
def test_vectorised_aggregation_equals_roll_reference(batch_shared, groups):
    torch.manual_seed(1)
    b, length, e = 5, 30, 3
    corr = torch.randn(b, groups, length, dtype=torch.float64)
    weights, delays = af.select_delays(corr, 6, batch_shared)
    if batch_shared:
        assert (delays == delays[:1]).all()
    else:
        assert not (delays == delays[:1]).all()  # per-sample delays really differ here
    values = torch.randn(b, groups, length, e, dtype=torch.float64, requires_grad=True)
    weights = weights.detach().requires_grad_(True)
    fast = af.time_delay_aggregation(values, weights, delays)
    slow = af.time_delay_aggregation_reference(values, weights, delays)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
    upstream = torch.randn_like(fast)
    grads_fast = torch.autograd.grad(fast, (values, weights), upstream)
    grads_slow = torch.autograd.grad(slow, (values, weights), upstream)
    for a, b_ in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b_, rtol=0, atol=1e-12)


def test_autocorrelation_shapes_and_per_sample_inference():
    torch.manual_seed(0)
    layer = af.AutoCorrelation(d_model=16, n_heads=4, factor=3)
    x, cross = torch.randn(6, 20, 16), torch.randn(6, 12, 16)
    assert af.top_k_for(20, 3) == 8  # floor(3 ln 20) = floor(8.99)
    for mode in (True, False):
        layer.train(mode)
        assert layer(x, x, x).shape == (6, 20, 16)
        assert layer(x, cross, cross).shape == (6, 20, 16)  # shorter keys: zero-padded
        assert layer(cross, x, x).shape == (6, 12, 16)  # longer keys: cut
    # Inference picks delays per sample: a window's output does not depend on its batch.
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x, x, x)[:1], layer(x[:1], x[:1], x[:1]))
    per_head = af.AutoCorrelation(d_model=16, n_heads=4, factor=3, delays_per_head=True)
    assert per_head.groups == 4 and per_head(x, x, x).shape == (6, 20, 16)


def test_head_count_matters_only_with_delays_per_head():
    """With head-shared delays (the default, as the paper's code) the correlation is averaged
    over every head and channel, so the same weights give the same output for any n_heads;
    with --delays-per-head each head picks its own delays and the output changes."""
    torch.manual_seed(0)
    x = torch.randn(4, 24, 16)
    outputs = {}
    for shared in (True, False):
        for heads in (1, 4):
            layer = af.AutoCorrelation(16, heads, factor=2, delays_per_head=not shared)
            torch.manual_seed(1)  # the same projection weights for every head count
            for p in layer.parameters():
                torch.nn.init.normal_(p)
            for mode in (True, False):
                outputs[shared, heads, mode] = layer.train(mode)(x, x, x).detach()
    for mode in (True, False):
        torch.testing.assert_close(outputs[True, 1, mode], outputs[True, 4, mode])
        assert not torch.allclose(outputs[False, 1, mode], outputs[False, 4, mode], atol=1e-3)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def test_fast_dropout_rate_scale_and_gradient():
    torch.manual_seed(0)
    layer = af.FastDropout(0.05)
    assert layer.p == pytest.approx(0.05, abs=1e-5)
    x = torch.ones(400_000, requires_grad=True)
    y = layer(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - layer.p) < 0.002  # about 6 standard errors
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - layer.p)))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # d(out)/d(x) = mask / (1 - p)
    assert not torch.equal(layer(x), layer(x))  # a fresh mask per call
    layer.eval()
    assert layer(x) is x
    assert af.FastDropout(0.0).train()(x) is x


def tiny_args(**overrides):
    argv = ["--d-model", "16", "--d-ff", "32", "--n-heads", "2", "--horizon", "12",
            "--seq-len", "24", "--label-len", "12"]  # fmt: skip
    args = af.parse_args(argv)
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


@pytest.mark.parametrize("features,c_in,out", [("M", 7, [0, 1, 2, 3, 4, 5, 6]), ("S", 1, [0]),
                                               ("MS", 7, [6])])  # fmt: skip
def test_model_forward_backward(features, c_in, out):
    torch.manual_seed(0)
    args = tiny_args(features=features)
    model = af.Autoformer(c_in, 4, args)
    x, x_mark, y_mark = torch.randn(3, 24, c_in), torch.randn(3, 24, 4), torch.randn(3, 24, 4)
    forecast, seasonal, trend = model(x, x_mark, y_mark, components=True)
    assert forecast.shape == (3, 12, c_in)
    torch.testing.assert_close(forecast, seasonal + trend)  # final prediction = W_S X + T
    loss = forecast[..., out].pow(2).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_bfloat16_autocast_training_step_and_float32_correlation():
    """Under bf16 autocast the matmuls run in bf16, but the FFT correlation stays float32 (and
    equals the float32 one), gradients reach every parameter and stay float32."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 24, 8), torch.randn(2, 24, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        corr = af.mean_autocorrelation(q.bfloat16(), k.bfloat16(), groups=2)
    assert corr.dtype == torch.float32
    torch.testing.assert_close(
        corr, af.mean_autocorrelation(q.bfloat16().float(), k.bfloat16().float(), 2)
    )
    model = af.Autoformer(7, 4, tiny_args())
    x, x_mark, y_mark = torch.randn(3, 24, 7), torch.randn(3, 24, 4), torch.randn(3, 24, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        forecast = model(x, x_mark, y_mark)
    assert forecast.shape == (3, 12, 7)
    forecast.float().pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_resolve_precision(monkeypatch):
    cpu = torch.device("cpu")
    assert af.resolve_precision("float32", cpu) is None
    assert af.resolve_precision("bfloat16", cpu) is torch.bfloat16
    monkeypatch.setattr(af, "cpu_has_native_bf16", lambda: False)
    assert af.resolve_precision("auto", cpu) is None
    monkeypatch.setattr(af, "cpu_has_native_bf16", lambda: True)
    assert af.resolve_precision("auto", cpu) is torch.bfloat16


def test_decoder_trend_starts_from_input_mean():
    # With every trend projection zeroed, the trend part of the forecast is the decoder's trend
    # input: the input's mean over the placeholder steps (Sec. 3.1).
    torch.manual_seed(0)
    model = af.Autoformer(7, 4, tiny_args()).eval()
    for layer in model.decoder:
        torch.nn.init.zeros_(layer.trend_projection.weight)
    x = torch.randn(2, 24, 7) + torch.arange(7.0)
    with torch.no_grad():
        _, _, trend = model(x, torch.randn(2, 24, 4), torch.randn(2, 24, 4), components=True)
    torch.testing.assert_close(trend, x.mean(1, keepdim=True).expand(-1, 12, -1))


@pytest.mark.parametrize(
    "argv",
    [["--d-model", "30", "--n-heads", "8"], ["--label-len", "100"], ["--horizon", "0"],
     ["--decomp-kernels", "5,x"], ["--resume", "/nonexistent/checkpoint.pt"]],
)  # fmt: skip
def test_bad_flags_exit_2(argv):
    with pytest.raises(SystemExit) as info:
        af.parse_args(argv)
    assert info.value.code == 2


def test_preset_values_and_overrides():
    paper = af.parse_args(["--preset", "paper"])
    assert (paper.d_model, paper.n_heads, paper.d_ff, paper.e_layers, paper.d_layers) == (
        512, 8, 2048, 2, 1)  # fmt: skip
    assert (paper.dropout, paper.factor, paper.moving_avg) == (0.05, 3.0, 25)
    cpu = af.parse_args(["--preset", "cpu", "--d-ff", "256"])
    assert (cpu.d_model, cpu.d_ff, cpu.e_layers, cpu.dropout) == (128, 256, 1, 0.05)
    assert af.parse_args([]).e_layers == 1  # cpu is the default preset
    # official-128: the paper's layout at the size (what the speed benchmark times).
    official = af.parse_args(["--preset", "official-128", "--dropout", "0.2"])
    assert (official.d_model, official.d_ff, official.e_layers, official.d_layers) == (
        128, 512, 2, 1)  # fmt: skip
    assert official.dropout == 0.2


# --------------------------------------------------------------------------------------------
# Smoke runs
# --------------------------------------------------------------------------------------------

SMOKE = ["--d-model", "16", "--d-ff", "32", "--n-heads", "2", "--horizon", "24",
         "--max-steps-per-epoch", "3", "--log-every", "1", "--eval-batch-size", "512",
         "--threads", "1"]  # fmt: skip


def test_smoke_run_and_resume(tiny_ett_root, tmp_path):
    out = tmp_path / "out"
    common = [*SMOKE, "--data-root", tiny_ett_root, "--out", out, "--run-name", "r"]
    proc = run_script("autoformer_decomp.py", *common, "--epochs", "1", "--precision", "bfloat16")
    assert "epoch 1 step 3/3" in proc.stdout  # plain progress lines without a TTY
    run = out / "autoformer_decomp" / "r"
    for name in ("config.json", "metrics.json", "log.jsonl", "checkpoint.pt", "pred.npy",
                 "true.npy", "loss_curves.png", "test_window.png", "decomposition_OT.png",
                 "decomposition_channels.png"):  # fmt: skip
        assert (run / name).is_file(), name
    pred, true = np.load(run / "pred.npy"), np.load(run / "true.npy")
    n_test = 2880 + 96 - 96 - 24 + 1  # 4 months of test rows + lookback, every window
    assert pred.shape == true.shape == (n_test, 24, 7)
    metrics = json.loads((run / "metrics.json").read_text())
    np.testing.assert_allclose(metrics["test_mse"], ((pred - true) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["test_mae"], np.abs(pred - true).mean(), rtol=1e-5)
    config = json.loads((run / "config.json").read_text())
    assert config["derived"]["top_k"] == {
        "encoder": 13,
        "decoder": 12,
    }  # floor(3 ln 96), floor(3 ln 72)
    assert config["derived"]["autocast_dtype"] == "bfloat16"

    # --resume continues the same run folder from epoch 2.
    run_script("autoformer_decomp.py", "--resume", run / "checkpoint.pt", "--epochs", "2",
               "--log-every", "1", "--threads", "1")  # fmt: skip
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 2
    # The paper code's schedule: epochs 1 and 2 at 1e-4, then halved after every epoch.
    assert log[0]["lr"] == log[1]["lr"] == pytest.approx(1e-4)
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(5e-5)


def test_decompose_only_writes_figures_and_exits(tiny_ett_root, tmp_path, capsys):
    af.main(["--decompose-only", "--data-root", str(tiny_ett_root), "--out", str(tmp_path),
             "--run-name", "d", "--decomp-kernels", "5,25"])  # fmt: skip
    run = tmp_path / "autoformer_decomp" / "d"
    assert sorted(p.name for p in run.iterdir()) == [
        "decomposition_OT.png", "decomposition_channels.png"]  # fmt: skip
    assert "wrote" in capsys.readouterr().out


def test_missing_data_exits_with_message(tmp_path):
    # No data and (in the test sandbox) a failing or absent download: a message, exit != 0.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "ETT-small").write_text("a file where the folder should be")
    proc = run_script("autoformer_decomp.py", "--decompose-only", "--data-root", empty,
                      "--out", tmp_path, check=False)  # fmt: skip
    assert proc.returncode != 0
    assert "ETTh1.csv" in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.realdata
def test_real_etth1_decomposition(real_ett_root, tmp_path):
    af.main(["--decompose-only", "--data-root", str(real_ett_root), "--out", str(tmp_path),
             "--run-name", "real"])  # fmt: skip
    assert (tmp_path / "autoformer_decomp" / "real" / "decomposition_channels.png").is_file()
