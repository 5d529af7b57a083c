"""gan_curve_painter.py: the a-fit and bound check on exact analytic curves, the losses on known
logits, and a smoke run of the script with --resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_script
from PIL import Image

import gan_curve_painter as p

X = np.linspace(-1, 1, 15)


def parabolas(a: np.ndarray) -> np.ndarray:
    return a[:, None] * X**2 + (a[:, None] - 1)


def test_fit_a_recovers_exact_a():
    a = np.array([1.0, 1.3, 1.77, 2.0, 0.4, 3.5])
    np.testing.assert_allclose(p.fit_a(parabolas(a), X), a, rtol=1e-12)
    # least squares: a constant offset c on every point moves a by c * sum(b) / sum(b^2)
    b = X**2 + 1
    np.testing.assert_allclose(
        p.fit_a(parabolas(a) + 0.1, X), a + 0.1 * b.sum() / (b @ b), rtol=1e-12
    )


def test_within_bounds_and_tolerance():
    curves = parabolas(np.array([1.0, 2.0, 1.5, 2.1, 0.9]))
    assert p.within_bounds(curves, X, 0.0).all(axis=1).tolist() == [True, True, True, False, False]
    upper = 2 * X**2 + 1
    lower = X**2
    assert p.within_bounds(upper[None] + 0.04, X, 0.05).all()
    assert not p.within_bounds(upper[None] + 0.06, X, 0.05).all()
    assert p.within_bounds(lower[None] - 0.04, X, 0.05).all()
    # one point out of 15 breaks the whole curve but only 1/15 of the points
    bent = parabolas(np.array([1.5]))
    bent[0, 7] = 5.0
    m = p.curve_metrics(bent, X, 0.05)
    assert m["curves_within_bounds"] == 0.0
    assert m["points_within_bounds"] == pytest.approx(14 / 15)


def test_curve_metrics_on_ideal_paintings():
    n = 1000
    a = 1 + (np.arange(n) + 0.5) / n  # the U(1, 2) quantiles
    m = p.curve_metrics(parabolas(a), X, 0.05)
    assert m["curves_within_bounds"] == 1.0
    assert m["a_mean"] == pytest.approx(1.5)
    assert m["a_std"] == pytest.approx(1 / np.sqrt(12), rel=1e-5)
    assert m["a_ks_vs_uniform"] == pytest.approx(0.5 / n)
    assert m["fit_residual_rms"] == pytest.approx(0.0, abs=1e-12)
    assert m["a_share_below_1"] == 0.0 and m["a_share_above_2"] == 0.0
    leaky = p.curve_metrics(parabolas(np.array([0.9, 1.5, 1.5, 2.01, 2.2])), X, 0.05)
    assert leaky["a_share_below_1"] == pytest.approx(0.2)
    assert leaky["a_share_above_2"] == pytest.approx(0.4)
    # a = 2.01 stays inside the tolerance band; a = 0.9 and 2.2 do not
    assert leaky["curves_within_bounds"] == pytest.approx(0.6)
    # all curves at a = 1.2: KS = max distance of a step at 1.2 from U(1, 2)'s CDF = 0.8
    assert p.curve_metrics(parabolas(np.full(10, 1.2)), X, 0.05)[
        "a_ks_vs_uniform"
    ] == pytest.approx(0.8)


def test_artist_works_lie_between_bounds():
    torch.manual_seed(0)
    x = p.paint_points(15)
    real = p.artist_works(500, x)
    assert real.shape == (500, 15)
    assert p.within_bounds(real.numpy(), x.numpy(), 0.0).all()
    a = p.fit_a(real.numpy(), x.numpy())
    np.testing.assert_allclose(real.numpy(), parabolas(a), atol=1e-5)
    assert 1.0 <= a.min() and a.max() <= 2.0


def test_losses_on_known_logits():
    real = torch.tensor([2.0, -1.0, 0.5])
    fake = torch.tensor([-0.3, 1.5, 0.0])
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    expected_d = -(torch.log(d_real).mean() + torch.log(1 - d_fake).mean())
    torch.testing.assert_close(p.d_loss(real, fake), expected_d)
    torch.testing.assert_close(
        p.d_loss(real, fake),
        F.binary_cross_entropy(d_real, torch.ones(3))
        + F.binary_cross_entropy(d_fake, torch.zeros(3)),
    )
    torch.testing.assert_close(p.g_loss(fake, "minimax"), torch.log(1 - d_fake).mean())
    torch.testing.assert_close(p.g_loss(fake, "nonsaturating"), -torch.log(d_fake).mean())
    # the two generator losses share the fixed point but not the gradient: where D confidently
    # rejects fakes (logit -6), minimax's gradient vanishes, non-saturating's does not
    low = torch.tensor([-6.0], requires_grad=True)
    (g_mm,) = torch.autograd.grad(p.g_loss(low, "minimax"), low)
    (g_ns,) = torch.autograd.grad(p.g_loss(low, "nonsaturating"), low)
    assert abs(g_mm.item()) < 0.01 < 0.99 < abs(g_ns.item())
    with pytest.raises(ValueError):
        p.g_loss(fake, "wgan")


@pytest.mark.parametrize(
    "argv",
    [
        ["--steps", "0"],
        ["--ema", "1.0"],
        ["--points", "2"],
        ["--g-loss", "hinge"],
        ["--tolerance", "-0.1"],
        ["--adam-betas", "0.9", "1.0"],
        ["--lr-d", "0"],
        ["--preset", "fast"],
    ],
)
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        p.parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_optimizer_presets_and_overrides():
    ours = p.parse_args([])
    assert (ours.lr_g, ours.lr_d, ours.adam_betas) == (6e-4, 6e-4, (0.0, 0.9))
    tutorial = p.parse_args(["--preset", "tutorial"])
    assert (tutorial.lr_g, tutorial.lr_d, tutorial.adam_betas) == (1e-4, 1e-4, (0.9, 0.999))
    # an explicit flag wins over the preset, the rest still come from it
    mixed = p.parse_args(["--preset", "tutorial", "--lr-d", "3e-4", "--adam-betas", "0.5", "0.9"])
    assert (mixed.lr_g, mixed.lr_d, mixed.adam_betas) == (1e-4, 3e-4, (0.5, 0.9))


SMALL = [
    "--log-every",
    "10",
    "--frame-every",
    "20",
    "--eval-curves",
    "100",
    "--checkpoint-every",
    "20",
    "--hidden",
    "32",
]


def test_smoke_run_and_resume(tmp_path, capsys):
    run_script(
        "gan_curve_painter.py", "--steps", "40", *SMALL, "--out", tmp_path, "--run-name", "r"
    )
    run_dir = tmp_path / "gan_curve_painter" / "r"
    for name in (
        "config.json",
        "metrics.json",
        "log.jsonl",
        "checkpoint.pt",
        "paintings.npy",
        "training.gif",
        "final.png",
        "losses.png",
    ):
        assert (run_dir / name).is_file(), name
    assert np.load(run_dir / "paintings.npy").shape == (100, 15)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in (
        "curves_within_bounds",
        "points_within_bounds",
        "a_mean",
        "a_std",
        "a_ks_vs_uniform",
        "d_real",
    ):
        assert np.isfinite(metrics[key])
    assert 0.0 <= metrics["curves_within_bounds"] <= metrics["points_within_bounds"] <= 1.0
    probe = metrics["d_on_family"]
    assert list(probe) == [f"{a:.2f}" for a in p.D_PROBE_A]
    assert all(0.0 < v < 1.0 for v in probe.values())
    assert sorted(f.name for f in (run_dir / "frames").iterdir()) == [
        "step_0000000.png",
        "step_0000020.png",
        "step_0000040.png",
    ]

    # resume in-process: continues at step 40, appends log rows and frames
    p.main(["--steps", "60", *SMALL, "--resume", str(run_dir / "checkpoint.pt")])
    assert "resumed" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40, 50, 60]
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == 60
    with Image.open(run_dir / "training.gif") as gif:
        assert gif.n_frames == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_requested_but_absent_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        p.parse_args(["--device", "cuda"])
    assert exc.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err
