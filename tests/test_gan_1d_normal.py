"""gan_1d_normal.py: preprocessing maths, distances to the target, losses, the optimizer, and
smoke runs of the script (single mode, --mode all, --resume)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_script
from scipy import stats

import gan_1d_normal as g


@pytest.mark.parametrize("mode", g.MODES)
def test_preprocess_shapes_batched(mode):
    x = torch.randn(3, 7, 40)
    out = g.PREPROCESS[mode](x)
    assert out.shape == (3, 7, g.d_input_size(mode, 40))
    # batching along leading axes gives the same as one minibatch at a time
    torch.testing.assert_close(out[1, 2], g.PREPROCESS[mode](x[1, 2]))


def test_moments_exact_on_known_arrays():
    # +-1 equally often: mean 0, std 1, skewness 0, kurtosis 1 -> excess -2
    x = torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(
        g.preprocess_moments(x), torch.tensor([0.0, 1.0, 0.0, -2.0], dtype=torch.float64)
    )
    # an asymmetric array against scipy's population (biased) estimators
    y = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    ref = [y.mean(), y.std(), stats.skew(y), stats.kurtosis(y)]
    got = g.preprocess_moments(torch.tensor(y)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert g.describe(y) == pytest.approx(
        dict(zip(["mean", "std", "skewness", "excess_kurtosis"], ref, strict=True))
    )


def test_diffs_variances_exact():
    x = torch.tensor([3.0, 1.0, 2.0, 6.0])  # mean 3
    torch.testing.assert_close(
        g.preprocess_diffs(x), torch.tensor([3.0, 1.0, 2.0, 6.0, 0.0, -2.0, -1.0, 3.0])
    )
    torch.testing.assert_close(
        g.preprocess_variances(x), torch.tensor([3.0, 1.0, 2.0, 6.0, 0.0, 4.0, 1.0, 9.0])
    )
    torch.testing.assert_close(g.preprocess_raw(x), x)


def test_quantiles_exact_and_invariant():
    x = torch.tensor([3.0, 1.0, 2.0, 6.0], dtype=torch.float64)  # mean 3, population std sqrt(3.5)
    s = math.sqrt(3.5)
    # standardised sorted values (-2, -1, 0, 3) / s, averaged in 2 blocks of 2
    expected = torch.tensor([3.0, s, -1.5 / s, 1.5 / s], dtype=torch.float64)
    torch.testing.assert_close(g.preprocess_quantiles(x, blocks=2), expected)
    # with one block per sample it is the whole standardised sorted batch
    torch.testing.assert_close(
        g.preprocess_quantiles(x, blocks=4)[2:],
        torch.tensor([-2.0, -1.0, 0.0, 3.0], dtype=torch.float64) / s,
    )
    # order does not matter; an affine map a x + b only moves the (mean, std) part
    y = torch.randn(500, dtype=torch.float64)
    base = g.preprocess_quantiles(y)
    torch.testing.assert_close(g.preprocess_quantiles(y[torch.randperm(500)]), base)
    moved = g.preprocess_quantiles(2.5 * y + 4.0)
    torch.testing.assert_close(moved[2:], base[2:])
    torch.testing.assert_close(moved[:2], torch.stack([2.5 * base[0] + 4.0, 2.5 * base[1]]))
    # block means of a standardised batch: increasing, and their mean is 0
    assert torch.all(base[3:] > base[2:-1])
    assert abs(base[2:].mean().item()) < 1e-12


def test_w1_point_mass_is_mean_absolute_deviation():
    # W1(delta_mu, N(mu, s)) = E|X - mu| = s * sqrt(2 / pi)
    for mean, std in ((4.0, 1.25), (0.0, 1.0)):
        assert g.wasserstein1_to_normal(np.array([mean]), mean, std) == pytest.approx(
            std * math.sqrt(2 / math.pi), rel=1e-12
        )
    # a point mass off-centre: E|X - c| for X ~ N(0, 1), c = 1.5
    c = 1.5
    expected = c * (2 * stats.norm.cdf(c) - 1) + 2 * stats.norm.pdf(c)
    assert g.wasserstein1_to_normal(np.array([c]), 0.0, 1.0) == pytest.approx(expected, rel=1e-12)


def test_w1_matches_numeric_integral_and_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(4.3, 1.0, size=300)
    grid = np.linspace(-6, 14, 400_001)
    ecdf = np.searchsorted(np.sort(x), grid, side="right") / len(x)
    numeric = np.trapezoid(np.abs(ecdf - stats.norm.cdf(grid, 4.0, 1.25)), grid)
    assert g.wasserstein1_to_normal(x, 4.0, 1.25) == pytest.approx(numeric, abs=1e-4)
    # the target's own quantiles shifted by 0.2 are at W1 distance ~0.2
    p = (np.arange(20_000) + 0.5) / 20_000
    shifted = 4.2 + 1.25 * stats.norm.ppf(p)
    assert g.wasserstein1_to_normal(shifted, 4.0, 1.25) == pytest.approx(0.2, abs=2e-3)


def test_ks_statistic():
    assert g.ks_to_normal(np.full(10, 4.0), 4.0, 1.25) == pytest.approx(0.5)
    p = (np.arange(1000) + 0.5) / 1000
    assert g.ks_to_normal(4.0 + 1.25 * stats.norm.ppf(p), 4.0, 1.25) == pytest.approx(
        0.0005, abs=1e-9
    )


def test_losses_match_bce():
    real, fake = torch.tensor([2.0, -1.0, 0.3]), torch.tensor([-0.5, 3.0, 0.0])
    d_real_err, d_fake_err = g.d_loss_terms(real, fake)
    bce = F.binary_cross_entropy
    torch.testing.assert_close(
        d_real_err, bce(torch.sigmoid(real), torch.ones(3), reduction="none")
    )
    torch.testing.assert_close(
        d_fake_err, bce(torch.sigmoid(fake), torch.zeros(3), reduction="none")
    )
    torch.testing.assert_close(g.g_loss_nonsaturating(fake), -torch.log(torch.sigmoid(fake)))
    # finite where sigmoid saturates in float32 (log(0) in the naive form)
    assert torch.isfinite(g.g_loss_nonsaturating(torch.tensor([-200.0]))).all()


def test_momentum_sgd_equals_torch_sgd():
    torch.manual_seed(0)
    net_a = torch.nn.Linear(3, 2)
    net_b = torch.nn.Linear(3, 2)
    net_b.load_state_dict(net_a.state_dict())
    packed = g.FlatParams(net_a)
    ours = g.MomentumSGD(packed, lr=0.05, momentum=0.9)
    ref = torch.optim.SGD(net_b.parameters(), lr=0.05, momentum=0.9)
    for _ in range(5):
        x = torch.randn(4, 3)
        packed.set_grads(torch.autograd.grad(net_a(x).pow(2).sum(), list(net_a.parameters())))
        ours.step()
        ref.zero_grad()
        net_b(x).pow(2).sum().backward()
        ref.step()
    for pa, pb in zip(net_a.parameters(), net_b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    state = ours.state_dict()
    fresh = g.MomentumSGD(packed, lr=1.0, momentum=0.0)
    fresh.load_state_dict(state)
    assert fresh.lr == 0.05 and fresh.momentum == 0.9
    torch.testing.assert_close(fresh.buffer, ours.buffer)
    # a checkpoint from before the packing kept one buffer per parameter
    old = {
        "lr": 0.05,
        "momentum": 0.9,
        "buffers": [ref.state[p]["momentum_buffer"].clone() for p in net_b.parameters()],
    }
    fresh.buffer.zero_()
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.buffer, ours.buffer)


def test_flat_params_are_views_the_module_sees():
    """Packing keeps the module's values; an update of the flat tensor is an update of the
    module, and load_state_dict writes through into the flat tensor."""
    torch.manual_seed(0)
    net = g.Discriminator(4, 10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(3, 4)
    out_before = net(x)
    packed = g.FlatParams(net)
    assert packed.flat.numel() == sum(p.numel() for p in net.parameters())
    torch.testing.assert_close(net(x), out_before, rtol=0, atol=0)
    packed.flat.add_(1.0)
    torch.testing.assert_close(net.fc2.bias, before["fc2.bias"] + 1.0)
    net.load_state_dict(before)
    torch.testing.assert_close(packed.views[2], before["fc2.weight"])
    torch.testing.assert_close(packed.views_t[2], before["fc2.weight"].t())
    # gradients written into the views land in `grad`, in parameters() order
    packed.set_grads(tuple(torch.full_like(p, i) for i, p in enumerate(net.parameters())))
    assert [float(gr.mean()) for gr in packed.grads] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_train_epoch_is_deterministic_and_moves_both_nets():
    args = g.parse_args(
        ["--batch-size", "40", "--d-steps", "3", "--g-steps", "2", "--mode", "quantiles"]
    )
    results = []
    for _ in range(2):
        g.seed_everything(1)
        G, D = g.Generator(), g.Discriminator(g.d_input_size("quantiles", 40))
        before = [p.clone() for p in (*G.parameters(), *D.parameters())]
        opt_d, opt_g = g.make_optimizers(G, D, args)
        out = g.train_epoch(G, D, opt_d, opt_g, g.preprocess_quantiles, args, torch.device("cpu"))
        after = list(G.parameters()) + list(D.parameters())
        assert all(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
        assert out["fake"].shape == (40,) and out["real"].shape == (40,)
        results.append(torch.cat([p.detach().flatten() for p in after]))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_discriminator_health_sees_linear_and_saturated_units():
    args = g.parse_args(["--batch-size", "50", "--mode", "moments"])
    G, D = g.Generator(), g.Discriminator(4)
    cpu = torch.device("cpu")
    with torch.no_grad():
        for p in D.parameters():
            p.zero_()  # every pre-activation 0: sigmoid' at its maximum, D = sigmoid(0)
    health = g.discriminator_health(D, G, g.preprocess_moments, args, cpu, batches=5)
    assert health["d_first_layer_slope"] == pytest.approx(1.0)
    assert health["d_real"] == pytest.approx(0.5) and health["d_fake"] == pytest.approx(0.5)
    with torch.no_grad():
        D.fc1.bias.fill_(12.0)  # saturated: sigmoid'(12) / 0.25 = 4 e^-12 / (1 + e^-12)^2
    health = g.discriminator_health(D, G, g.preprocess_moments, args, cpu, batches=5)
    assert health["d_first_layer_slope"] == pytest.approx(4 * math.exp(-12), rel=1e-3)


def test_r1_penalty_exact_and_differentiable():
    """logit = w . x on the real row: d logit / dx = w, so R1 = gamma/2 ||w||^2 and its gradient
    w.r.t. w is gamma * w; the fake row must not count."""
    w = torch.tensor([0.5, -2.0, 1.0], requires_grad=True)
    features = torch.tensor([[1.0, 2.0, 3.0], [9.0, 9.0, 9.0]]).requires_grad_(True)
    logits = features @ w
    penalty = g.r1_penalty(logits[0], features, gamma=4.0)
    torch.testing.assert_close(penalty, torch.tensor(0.5 * 4.0 * (0.25 + 4.0 + 1.0)))
    (grad_w,) = torch.autograd.grad(penalty, w)
    torch.testing.assert_close(grad_w, 4.0 * w.detach())


@pytest.mark.parametrize("mode", g.MODES)
def test_hand_written_generator_grads_match_autograd(mode):
    """generator_grads (chain rule written out; closed-form moments backward) must give
    autograd's gradient of -log D(preprocess(G(u))) w.r.t. G's parameters, in float64."""
    torch.manual_seed(0)
    G, D = g.Generator().double(), g.Discriminator(g.d_input_size(mode, 60)).double()
    u = torch.rand(60, dtype=torch.float64)
    ref_x = G(u)
    ref_logit = D(g.PREPROCESS[mode](ref_x))
    ref = torch.autograd.grad(g.g_loss_nonsaturating(ref_logit), list(G.parameters()))
    g_packed, d_packed = g.FlatParams(G), g.FlatParams(D)
    x, logit = g.generator_grads(g_packed, d_packed, g.PREPROCESS[mode], u.unsqueeze(-1))
    torch.testing.assert_close(x, ref_x.detach())
    torch.testing.assert_close(logit, ref_logit.detach())
    for got, want in zip(g_packed.grads, ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_hand_written_discriminator_grads_match_autograd():
    torch.manual_seed(0)
    D = g.Discriminator(22).double()
    features = torch.randn(2, 22, dtype=torch.float64)
    sign = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    ref_logits = D(features)
    real_err, fake_err = g.d_loss_terms(ref_logits[0], ref_logits[1])
    ref = torch.autograd.grad(real_err + fake_err, list(D.parameters()))
    packed = g.FlatParams(D)
    logits = g.discriminator_grads(packed, features, sign)
    torch.testing.assert_close(logits, ref_logits.detach())
    for got, want in zip(packed.grads, ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_moments_vjp_matches_autograd_on_a_skewed_batch():
    x = torch.tensor([0.5, 1.0, 1.5, 4.0, 9.0, -2.0], dtype=torch.float64, requires_grad=True)
    feats = g.preprocess_moments(x)
    upstream = torch.tensor([0.3, -1.2, 0.7, 2.0], dtype=torch.float64)
    (want,) = torch.autograd.grad(feats, x, upstream)
    std, mean = torch.std_mean(x.detach(), correction=0)
    got = g.moments_vjp((x.detach() - mean) / std, feats.detach(), upstream)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_recipes_fill_only_unset_flags():
    quant = g.with_recipe(g.parse_args(["--mode", "quantiles"]))
    assert {k: getattr(quant, k) for k in g.RECIPES["quantiles"]} == g.RECIPES["quantiles"]
    notes = g.with_recipe(g.parse_args(["--mode", "moments"]))
    assert {k: getattr(notes, k) for k in g.RECIPES["notes"]} == g.RECIPES["notes"]
    mixed = g.with_recipe(
        g.parse_args(["--mode", "quantiles", "--r1-gamma", "0", "--lr-g", "1e-4"])
    )
    assert (mixed.r1_gamma, mixed.lr_g, mixed.lr_d) == (0.0, 1e-4, 4e-3)


def test_train_epoch_r1_changes_only_d_update():
    """R1 enters D's update (so D differs) and, with gamma 0, the update is the plain one."""

    def d_after(gamma):
        flags = "--mode quantiles --d-steps 3 --g-steps 1 --batch-size 40 --r1-gamma"
        args = g.parse_args([*flags.split(), str(gamma)])
        torch.manual_seed(0)
        G, D = g.Generator(), g.Discriminator(g.d_input_size("quantiles", 40))
        opt_d, opt_g = g.make_optimizers(G, D, args)
        torch.manual_seed(1)
        out = g.train_epoch(G, D, opt_d, opt_g, g.preprocess_quantiles, args, torch.device("cpu"))
        return [p.detach().clone() for p in D.parameters()], out

    plain, out0 = d_after(0.0)
    penalised, out1 = d_after(10.0)
    assert not all(torch.equal(a, b) for a, b in zip(plain, penalised, strict=True))
    torch.testing.assert_close(out0["real"], out1["real"])  # same data, only the update differs


@pytest.mark.parametrize(
    "argv",
    [
        ["--epochs", "0"],
        ["--std", "-1"],
        ["--batch-size", "2"],
        ["--r1-gamma", "-1"],
        ["--lr-d", "0"],
        ["--mode", "all", "--resume", "x.pt"],
        ["--mode", "bogus"],
    ],
)
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        g.parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


SMALL = [
    "--batch-size",
    "40",
    "--d-steps",
    "2",
    "--g-steps",
    "2",
    "--eval-samples",
    "400",
    "--print-every",
    "2",
    "--snapshots",
    "3",
    "--checkpoint-every",
    "3",
]


def test_smoke_single_mode_and_resume(tmp_path, capsys):
    recipe = ["--ema", "0.5", "--lr-decay", "linear"]
    run_script(
        "gan_1d_normal.py", "--epochs", "4", *SMALL, *recipe, "--out", tmp_path, "--run-name", "r"
    )
    run_dir = tmp_path / "gan_1d_normal" / "r"
    for name in (
        "config.json",
        "metrics.json",
        "log.jsonl",
        "checkpoint.pt",
        "samples.npy",
        "histograms.png",
        "moments.png",
        "input_distribution.png",
    ):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("mean", "std", "skewness", "excess_kurtosis", "ks", "w1"):
        assert math.isfinite(metrics[key])
    assert np.load(run_dir / "samples.npy").shape == (400,)
    assert json.loads((run_dir / "config.json").read_text())["d_input_size"] == 4
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["epoch"] == 4

    # resume in-process (same code path as the CLI, without a second interpreter start-up)
    assert metrics["evaluated_generator"] == "ema" and "ks" in metrics["raw_generator"]
    g.main(["--epochs", "7", *SMALL, *recipe, "--resume", str(run_dir / "checkpoint.pt")])
    assert "resumed" in capsys.readouterr().out
    epochs = [
        json.loads(line)["epoch"] for line in (run_dir / "log.jsonl").read_text().splitlines()
    ]
    assert epochs == [0, 2, 3, 4, 6]  # first run 0, 2, 3 (last); resumed run 4, 6 (last)
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_this_run"] == 3
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["epoch"] == 7


def test_smoke_mode_all_writes_comparison(tmp_path):
    g.main(["--mode", "all", "--epochs", "2", *SMALL, "--out", str(tmp_path), "--run-name", "a"])
    run_dir = tmp_path / "gan_1d_normal" / "a"
    comparison = json.loads((run_dir / "comparison.json").read_text())
    assert list(comparison) == list(g.MODES)
    assert (run_dir / "comparison.png").is_file()
    for mode in g.MODES:
        assert json.loads((run_dir / mode / "config.json").read_text())["mode"] == mode
        assert (run_dir / mode / "samples.npy").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_requested_but_absent_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        g.parse_args(["--device", "cuda"])
    assert exc.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err
