"""gan_curve_painter.py: the a-fit and bound check on exact analytic curves, the losses on known
logits, flag errors, and the same seed giving a bit-identical run (with every output file)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_script
from PIL import Image

import gan_curve_painter as p

TINY = ["--steps", "30", "--frame-every", "10"]
CONTRACT = {"tiny": TINY, "size_flag": "--steps", "data": None}

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
    m = p.curve_metrics(bent, X)
    assert m["curves_within_bounds"] == 0.0
    assert m["points_within_bounds"] == pytest.approx(14 / 15)


def test_curve_metrics_on_ideal_paintings():
    n = 1000
    a = 1 + (np.arange(n) + 0.5) / n  # the U(1, 2) quantiles
    m = p.curve_metrics(parabolas(a), X)
    assert m["curves_within_bounds"] == 1.0
    assert m["a_mean"] == pytest.approx(1.5)
    assert m["a_std"] == pytest.approx(1 / np.sqrt(12), rel=1e-5)
    assert m["a_ks_vs_uniform"] == pytest.approx(0.5 / n)
    assert m["fit_residual_rms"] == pytest.approx(0.0, abs=1e-12)
    assert m["a_share_below_1"] == 0.0 and m["a_share_above_2"] == 0.0
    leaky = p.curve_metrics(parabolas(np.array([0.9, 1.5, 1.5, 2.01, 2.2])), X)
    assert leaky["a_share_below_1"] == pytest.approx(0.2)
    assert leaky["a_share_above_2"] == pytest.approx(0.4)
    # a = 2.01 stays inside the tolerance band; a = 0.9 and 2.2 do not
    assert leaky["curves_within_bounds"] == pytest.approx(0.6)
    # all curves at a = 1.2: KS = max distance of a step at 1.2 from U(1, 2)'s CDF = 0.8
    assert p.curve_metrics(parabolas(np.full(10, 1.2)), X)["a_ks_vs_uniform"] == pytest.approx(0.8)


def test_artist_works_lie_between_bounds():
    x = torch.linspace(-1, 1, 15)
    real = p.artist_works(500, x, torch.Generator().manual_seed(0))
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
    "argv, flag",
    [
        (["--steps", "0"], "--steps"),
        (["--ema", "1.0"], "--ema"),
        (["--g-loss", "hinge"], "--g-loss"),
        (["--adam-betas", "0.9", "1.0"], "--adam-betas"),
        (["--lr-d", "0"], "--lr-d"),
        (["--preset", "fast"], "--preset"),
        (["--frame-every", "0"], "--frame-every"),
    ],
)
def test_bad_flags_are_usage_errors_naming_the_flag(argv, flag):
    with pytest.raises(p.UsageError, match=flag):
        p.parse_args(argv)


def test_optimizer_presets_and_overrides():
    ours = p.parse_args([])
    assert (ours.lr_g, ours.lr_d, ours.adam_betas) == (6e-4, 6e-4, (0.0, 0.9))
    notes = p.parse_args(["--preset", "notes"])
    assert (notes.lr_g, notes.lr_d, notes.adam_betas) == (1e-4, 1e-4, (0.9, 0.999))
    # an explicit flag wins over the preset, the rest still come from it
    mixed = p.parse_args(["--preset", "notes", "--lr-d", "3e-4", "--adam-betas", "0.5", "0.9"])
    assert (mixed.lr_g, mixed.lr_d, mixed.adam_betas) == (1e-4, 3e-4, (0.5, 0.9))


def test_same_seed_is_bit_identical_and_writes_every_output(tmp_path):
    """Two runs of the same seed end with equal weights (every tensor) and equal metrics, so
    the frames and evaluation (their own generator) do not move the training stream; then a
    finished run resumed keeps its own flags and a changed flag is refused."""
    ckpts, metrics = [], []
    for name in ("a", "b"):
        run_script("gan_curve_painter.py", *TINY, "--seed", "4", "--out", tmp_path,
                   "--run-name", name)  # fmt: skip
        run_dir = tmp_path / "gan_curve_painter" / name
        ckpts.append(torch.load(run_dir / "checkpoint.pt", weights_only=False))
        metrics.append(json.loads((run_dir / "metrics.json").read_text()))
    for net in ("G", "D", "G_avg"):
        for key, value in ckpts[0][net].items():
            assert torch.equal(value, ckpts[1][net][key]), (net, key)
    drop = ("train_seconds",)
    assert {k: v for k, v in metrics[0].items() if k not in drop} == {
        k: v for k, v in metrics[1].items() if k not in drop
    }
    run_dir = tmp_path / "gan_curve_painter" / "a"
    for name in ("config.json", "log.jsonl", "paintings.npy", "training.gif", "final.png",
                 "losses.png"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    assert np.load(run_dir / "paintings.npy").shape == (p.EVAL_CURVES, p.POINTS)
    m = metrics[0]
    assert 0.0 <= m["curves_within_bounds"] <= m["points_within_bounds"] <= 1.0
    assert list(m["d_on_family"]) == [f"{a:.2f}" for a in p.D_PROBE_A]
    frames = sorted(f.name for f in (run_dir / "frames").iterdir())
    assert frames == ["step_0000000.png", "step_0000010.png", "step_0000020.png",
                      "step_0000030.png"]  # fmt: skip
    with Image.open(run_dir / "training.gif") as gif:
        assert gif.n_frames == 4
    ckpt = run_dir / "checkpoint.pt"
    with pytest.raises(p.UsageError, match="--g-loss"):
        p.parse_args(["--resume", str(ckpt), "--g-loss", "nonsaturating"])
    p.main(["--resume", str(ckpt)])
    assert json.loads((run_dir / "metrics.json").read_text())["a_mean"] == m["a_mean"]
