"""Tests for gan_mnist.py: its pieces (idx parsing, losses, FID / IS maths, EMA, sampling, the
training step, the classifier cache), its error paths, and a smoke run as a user runs it."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from conftest import _write_idx, run_script, write_tiny_mnist

import gan_mnist as gm


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    """Our own tiny MNIST root (the classifier cache is written into it)."""
    return write_tiny_mnist(tmp_path_factory.mktemp("gan_mnist_data"), n_train=512, n_test=256)


# ---------------------------------------------------------------------------- data


def test_read_idx_plain_and_gz_roundtrip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "x-idx3-ubyte", arr)
    with gzip.open(tmp_path / "x-idx3-ubyte.gz", "wb") as f:
        f.write((tmp_path / "x-idx3-ubyte").read_bytes())
    np.testing.assert_array_equal(gm.read_idx(tmp_path / "x-idx3-ubyte"), arr)
    np.testing.assert_array_equal(gm.read_idx(tmp_path / "x-idx3-ubyte.gz"), arr)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04" + bytes(16))
    with pytest.raises(SystemExit, match="bad magic"):
        gm.read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "short", np.zeros((3, 28, 28), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-10])
    with pytest.raises(SystemExit, match="truncated"):
        gm.read_idx(tmp_path / "short")


def test_load_mnist_accepts_gz_only(tmp_path):
    root = write_tiny_mnist(tmp_path, n_train=20, n_test=10)
    for name in gm.MNIST_FILES.values():
        (root / "MNIST" / "raw" / name).unlink()  # leave only the .gz twins
    data = gm.load_mnist(root)
    assert data["train_images"].shape == (20, 28, 28) and data["test_labels"].shape == (10,)


def test_missing_data_message_names_files_and_folder(tmp_path, monkeypatch, capsys):
    import torchvision

    def no_internet(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", no_internet)
    with pytest.raises(SystemExit) as exc:
        gm.main(["--data-root", str(tmp_path), "--out", str(tmp_path / "out")])
    message = str(exc.value.code)
    assert message.startswith("error:")
    for name in gm.MNIST_FILES.values():
        assert name in message
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "download failed" in capsys.readouterr().out


# ---------------------------------------------------------------------------- models and losses


def test_model_shapes_and_output_ranges():
    for preset, lo in (("notes", 0.0), ("classic", -1.0)):
        g, d = gm.build_generator(preset), gm.build_discriminator(preset)
        z = torch.randn(8, gm.PRESETS[preset]["latent_dim"]) * 10
        x = g(z)
        assert x.shape == (8, 784)
        assert x.min() >= lo and x.max() <= 1.0
        assert d(x).shape == (8, 1)
    linear_widths = [
        m.out_features for m in gm.build_discriminator("notes") if isinstance(m, torch.nn.Linear)
    ]
    assert linear_widths == [512, 256, 128, 64, 32, 1]
    classic_bn = [m for m in gm.build_generator("classic") if isinstance(m, torch.nn.BatchNorm1d)]
    assert [m.num_features for m in classic_bn] == [256, 512, 1024]  # none after the first block
    assert all(m.eps == 0.8 for m in classic_bn)
    notes_bn = [m for m in gm.build_generator("notes") if isinstance(m, torch.nn.BatchNorm1d)]
    assert [m.num_features for m in notes_bn] == [128, 256, 512, 1024]


def test_losses_match_bce_on_probabilities():
    real, fake = torch.randn(32, 1), torch.randn(32, 1)
    d_ref = F.binary_cross_entropy(
        torch.sigmoid(real), torch.ones_like(real)
    ) + F.binary_cross_entropy(torch.sigmoid(fake), torch.zeros_like(fake))
    torch.testing.assert_close(gm.discriminator_loss(real, fake), d_ref)
    # Non-saturating: -log D(G(z)); minimax: log(1 - D(G(z))).
    torch.testing.assert_close(
        gm.generator_loss(fake, "nonsaturating"), -torch.log(torch.sigmoid(fake)).mean()
    )
    torch.testing.assert_close(
        gm.generator_loss(fake, "minimax"), torch.log(1 - torch.sigmoid(fake)).mean()
    )
    # Stable where the probability form overflows.
    assert torch.isfinite(gm.discriminator_loss(torch.tensor([[-200.0]]), torch.tensor([[200.0]])))


def test_update_ema_averages_weights_and_buffers():
    model, ema = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.running_mean.fill_(2.0)
        ema.weight.fill_(1.0)
    model.num_batches_tracked.fill_(7)
    gm.update_ema(ema, model, decay=0.75)
    torch.testing.assert_close(ema.weight, torch.full((3,), 1.5))  # 0.75 * 1 + 0.25 * 3
    torch.testing.assert_close(ema.running_mean, torch.full((3,), 0.5))
    assert ema.num_batches_tracked.item() == 7


def test_sample_batch_mode_matches_training_and_keeps_state():
    torch.manual_seed(0)
    g = gm.build_generator("notes")
    g.train()
    for _ in range(3):
        g(torch.randn(16, 96))  # give the running statistics non-default values
    g.eval()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    z = torch.randn(64, 96)
    batch_out = gm.sample(g, z, "batch", chunk=32)
    running_out = gm.sample(g, z, "running", chunk=32)
    for k, v in g.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not g.training
    with torch.no_grad():
        torch.testing.assert_close(running_out, g(z))
        g.train()  # reference for batch mode: training-mode forward passes per chunk
        expected = torch.cat([g(z[:32]), g(z[32:])])
    torch.testing.assert_close(batch_out, expected)
    assert not torch.allclose(batch_out, running_out)


def test_train_step_does_k_d_updates_per_g_update():
    torch.manual_seed(0)
    g, d = gm.build_generator("notes"), gm.build_discriminator("notes")
    g_opt, d_opt = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    reals = [torch.rand(16, 784) for _ in range(3)]
    g_before = [p.clone() for p in g.parameters()]
    stats = gm.train_step(g, d, g_opt, d_opt, reals, 96, recon_weight=0.05)
    d_steps = {int(s["step"]) for s in d_opt.state.values()}
    g_steps = {int(s["step"]) for s in g_opt.state.values()}
    assert d_steps == {3} and g_steps == {1}
    assert all(not torch.equal(a, b) for a, b in zip(g_before, g.parameters()))
    assert set(stats) == {"d_loss", "g_loss", "recon", "d_real", "d_fake"}
    assert 0 < stats["d_real"].item() < 1 and stats["recon"].item() > 0


def test_g_update_skips_d_weight_gradients_and_restores_d():
    """G's update must not compute D's weight gradients (thrown away anyway), and D must come
    out trainable again, also when G's loss raises."""
    torch.manual_seed(0)
    g, d = gm.build_generator("notes"), gm.build_discriminator("notes")
    g_opt, d_opt = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    grads_seen = []
    d[0].weight.register_hook(lambda grad: grads_seen.append(grad.clone()))
    gm.train_step(g, d, g_opt, d_opt, [torch.rand(16, 784) for _ in range(2)], 96)
    assert len(grads_seen) == 2  # the two D updates, none from G's update
    torch.testing.assert_close(d[0].weight.grad, grads_seen[-1])  # last D update's, unpolluted
    assert all(p.requires_grad for p in d.parameters())

    def broken_loss(*args, **kwargs):
        raise RuntimeError("boom")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gm, "generator_loss", broken_loss)
        with pytest.raises(RuntimeError, match="boom"):
            gm.train_step(g, d, g_opt, d_opt, [torch.rand(16, 784)], 96)
    assert all(p.requires_grad for p in d.parameters())


def test_one_sided_label_smoothing_is_bce_with_target_s():
    real, fake = torch.randn(32, 1), torch.randn(32, 1)
    expected = F.binary_cross_entropy_with_logits(
        real, torch.full_like(real, 0.9)
    ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    torch.testing.assert_close(gm.discriminator_loss(real, fake, real_label=0.9), expected)
    assert not torch.allclose(gm.discriminator_loss(real, fake), expected)


def test_train_step_d_loss_equals_separate_real_and_fake_passes():
    """D scores [real; fake] in one pass; the loss must be what two separate passes give."""
    torch.manual_seed(0)
    g, d = gm.build_generator("notes"), gm.build_discriminator("notes")
    d_before = gm.copy.deepcopy(d)
    g_opt, d_opt = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    real = torch.rand(16, 784)
    g_ref = gm.copy.deepcopy(g)
    torch.manual_seed(1)
    stats = gm.train_step(g, d, g_opt, d_opt, [real], 96)
    torch.manual_seed(1)
    with torch.no_grad():
        fake = g_ref(torch.randn(16, 96))
        expected = gm.discriminator_loss(d_before(real), d_before(fake))
    torch.testing.assert_close(stats["d_loss"], expected)
    torch.testing.assert_close(stats["d_real"], torch.sigmoid(d_before(real)).mean())


def test_train_step_bfloat16_autocast_keeps_float32_state():
    torch.manual_seed(0)
    g, d = gm.build_generator("notes"), gm.build_discriminator("notes", dropout=0.3)
    cfg = dict(lr=3e-4, betas=(0.4, 0.8), weight_decay=1e-4)
    g_opt, d_opt = gm.make_adam(g, cfg), gm.make_adam(d, cfg)
    stats = gm.train_step(
        g, d, g_opt, d_opt, [torch.rand(16, 784)], 96, recon_weight=0.05,
        autocast_dtype=torch.bfloat16,
    )  # fmt: skip
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in stats.values())
    assert all(p.dtype == torch.float32 for p in [*g.parameters(), *d.parameters()])
    assert sum(isinstance(m, torch.nn.Dropout) for m in d) == 5  # after each hidden layer


def test_r1_penalty_is_half_gamma_squared_input_gradient():
    """For a linear D(x) = w.x + b the input gradient is w at every x, so R1 = gamma/2 ||w||^2;
    for a GELU MLP it must match the per-sample autograd Jacobian row."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(784, 1)
    x = torch.rand(8, 784)
    expected = 0.5 * 10.0 * lin.weight.pow(2).sum()
    torch.testing.assert_close(gm.r1_penalty(lin, x, 10.0), expected)
    d = gm.build_discriminator("notes").double()
    x = torch.rand(3, 784, dtype=torch.float64)
    rows = [torch.autograd.functional.jacobian(lambda v: d(v[None])[0, 0], xi) for xi in x]
    brute = 0.5 * 2.0 * torch.stack([r.pow(2).sum() for r in rows]).mean()
    torch.testing.assert_close(gm.r1_penalty(d, x, 2.0), brute)
    # create_graph: the penalty has a gradient with respect to D's weights
    gm.r1_penalty(lin, torch.rand(4, 784), 1.0).backward()
    torch.testing.assert_close(lin.weight.grad, lin.weight.detach())


@pytest.mark.parametrize("step, applied", [(0, True), (1, False), (4, True)])
def test_train_step_applies_lazy_r1_on_every_nth_d_update(step, applied):
    """With --r1-every 4 the penalty (scaled by 4) joins D's gradient only on D updates 0, 4, ..."""
    grads = {}
    for gamma in (0.0, 3.0):
        torch.manual_seed(0)
        g, d = gm.build_generator("notes"), gm.build_discriminator("notes")
        g_opt = torch.optim.SGD(g.parameters(), lr=0.0)
        d_opt = torch.optim.SGD(d.parameters(), lr=0.0)  # lr 0: only the gradients change
        real = torch.rand(16, 784)
        gm.train_step(g, d, g_opt, d_opt, [real], 96, step=step, r1_gamma=gamma, r1_every=4)
        grads[gamma] = d[0].weight.grad.clone()
    if not applied:
        torch.testing.assert_close(grads[3.0], grads[0.0])
        return
    lin_extra = torch.autograd.grad(gm.r1_penalty(d, real, 12.0), d[0].weight)[0]
    torch.testing.assert_close(grads[3.0] - grads[0.0], lin_extra, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("step", [0, 1])
def test_shared_r1_pass_gives_the_separate_passes_gradient(step):
    """--r1-pass shared takes R1's input gradient from D's pass over [real; fake]; D has no
    BatchNorm, so in float32 D's gradient must equal loss + penalty from two separate passes."""
    grads = {}
    for shared in (False, True):
        torch.manual_seed(0)
        g, d = gm.build_generator("notes"), gm.build_discriminator("notes")
        g_opt = torch.optim.SGD(g.parameters(), lr=0.0)
        d_opt = torch.optim.SGD(d.parameters(), lr=0.0)
        real = torch.rand(16, 784)
        gm.train_step(
            g, d, g_opt, d_opt, [real], 96, step=step, r1_gamma=3.0, r1_every=2, r1_fused=shared
        )
        grads[shared] = [p.grad.clone() for p in d.parameters()]
        assert not real.requires_grad
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    if step == 0:  # and the penalty really is in there
        torch.manual_seed(0)
        g, d = gm.build_generator("notes"), gm.build_discriminator("notes")
        opts = [torch.optim.SGD(m.parameters(), lr=0.0) for m in (g, d)]
        gm.train_step(g, d, *opts, [torch.rand(16, 784)], 96, step=0, r1_fused=True)
        assert not torch.allclose(d[0].weight.grad, grads[True][0])


def test_top_k_generator_loss_uses_the_k_most_realistic_fakes():
    logits = torch.tensor([[-3.0], [2.0], [0.5], [-1.0]])
    torch.testing.assert_close(
        gm.generator_loss(logits, "nonsaturating", top_k=2),
        F.softplus(-torch.tensor([2.0, 0.5])).mean(),
    )
    for k in (None, 4, 10):
        torch.testing.assert_close(
            gm.generator_loss(logits, "nonsaturating", top_k=k), F.softplus(-logits).mean()
        )
    # k = batch * max(nu, decay^epoch)
    assert gm.top_k_count(64, 0.5, 0.9, 0) == 64
    assert gm.top_k_count(64, 0.5, 0.9, 2) == round(64 * 0.81)
    assert gm.top_k_count(64, 0.5, 0.9, 50) == 32
    assert gm.top_k_count(64, 1.0, 0.9, 50) == 64


def test_drs_acceptance_logit_is_the_logit_of_the_density_ratio():
    """sigmoid(F) must be exp(D~ - D~_M): p_data / (M p_g) for an optimal D (Azadi et al.)."""
    logits = torch.tensor([-5.0, -1.0, 0.0, 1.5, 2.0], dtype=torch.float64)
    max_logit = logits.max()
    keep = torch.sigmoid(gm.drs_acceptance_logit(logits, max_logit))
    torch.testing.assert_close(keep, torch.exp(logits - max_logit), atol=2e-6, rtol=1e-5)
    assert torch.isfinite(gm.drs_acceptance_logit(torch.tensor([9.0]), max_logit)).all()


class _UniformProposal(torch.nn.Module):
    """z ~ N(0, 1) -> Phi(z) ~ Uniform(0, 1), as a one-pixel 'generator'."""

    def forward(self, z):
        return torch.special.ndtr(z[:, :1])


class _RatioCritic(torch.nn.Module):
    """The optimal logit log p_data / p_g for p_data(x) = 2x on (0, 1) and p_g uniform."""

    def forward(self, x):
        return torch.log(2.0 * x.clamp_min(1e-12))


def test_drs_sample_turns_the_proposal_into_the_target_density():
    """With an optimal D and gamma = 0, DRS is exact rejection sampling: uniform proposals
    become the density 2x (mean 2/3, CDF x^2), and half of them are kept (1 / M, M = 2)."""
    rng = torch.Generator().manual_seed(0)
    critic = _RatioCritic().train()
    x, stats = gm.drs_sample(
        _UniformProposal(), critic, 20000, 1, "running", 64, None, 20000, rng, torch.device("cpu")
    )
    x = x.flatten().double()
    assert x.shape == (20000,) and critic.training  # D's mode is restored
    assert abs(x.mean().item() - 2 / 3) < 0.01  # uniform would give 1/2
    grid = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    empirical_cdf = (x[None, :] <= grid[:, None]).double().mean(1)
    assert (empirical_cdf - grid**2).abs().max() < 0.015
    assert abs(stats["drs_acceptance"] - 0.5) < 0.02 and stats["drs_gamma"] == 0.0
    # gamma from a percentile: a higher one keeps fewer samples.
    rates = [
        gm.drs_sample(
            _UniformProposal(), critic, 2000, 1, "running", 64, q, 5000, rng, torch.device("cpu")
        )[1]["drs_acceptance"]
        for q in (20.0, 80.0)
    ]
    assert rates[0] > rates[1]


def test_label_entropies_split_the_inception_score():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 10)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    parts = gm.label_entropies(probs)
    is_one_split = gm.inception_score(probs, splits=1)[0]
    assert math.exp(parts["label_entropy"] - parts["mean_conditional_entropy"]) == pytest.approx(
        is_one_split, rel=1e-9
    )
    sharp = np.eye(10)[rng.integers(0, 10, 1000)]  # confident and evenly spread: IS 10
    parts = gm.label_entropies(sharp)
    assert parts["mean_conditional_entropy"] == pytest.approx(0.0, abs=1e-9)
    assert parts["ambiguous_fraction"] == 0.0
    assert parts["label_entropy"] == pytest.approx(math.log(10), abs=0.01)
    flat = np.full((10, 10), 0.1)
    assert gm.label_entropies(flat)["ambiguous_fraction"] == 1.0


def test_make_adam_updates_like_plain_adam():
    cfg = dict(lr=1e-2, betas=(0.4, 0.8), weight_decay=1e-4)
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    opt_a = gm.make_adam(a, cfg)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2, betas=(0.4, 0.8), weight_decay=1e-4)
    for _ in range(5):
        x = torch.randn(16, 8)
        for net, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


def test_resolve_precision(monkeypatch):
    cpu = torch.device("cpu")
    assert gm.resolve_precision("float32", cpu) is None
    assert gm.resolve_precision("bfloat16", cpu) is torch.bfloat16
    monkeypatch.setattr(gm, "cpu_has_native_bf16", lambda: False)
    assert gm.resolve_precision("auto", cpu) is None  # emulated bf16 would be slower
    monkeypatch.setattr(gm, "cpu_has_native_bf16", lambda: True)
    assert gm.resolve_precision("auto", cpu) is torch.bfloat16


# ---------------------------------------------------------------------------- evaluation maths


def _random_cov(rng, n):
    a = rng.standard_normal((n, n))
    return a @ a.T / n + 0.1 * np.eye(n)


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    c1, c2 = _random_cov(rng, 12), _random_cov(rng, 12)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    reference = (mu1 - mu2) @ (mu1 - mu2) + np.trace(c1 + c2 - 2 * covmean)
    assert gm.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(reference, rel=1e-8)
    assert gm.frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-8)
    # Singular covariances (rank-deficient features) stay finite and non-negative.
    low_rank = np.outer(mu1, mu1)
    assert 0 <= gm.frechet_distance(mu1, low_rank, mu1, low_rank) < 1e-6


def test_inception_score_extremes():
    confident_balanced = np.eye(10)[np.arange(1000) % 10]
    assert gm.inception_score(confident_balanced)[0] == pytest.approx(10.0, rel=1e-6)
    single_digit = np.eye(10)[np.zeros(1000, dtype=int)]
    assert gm.inception_score(single_digit)[0] == pytest.approx(1.0, rel=1e-6)
    uniform = np.full((1000, 10), 0.1)
    assert gm.inception_score(uniform)[0] == pytest.approx(1.0, rel=1e-6)
    # Two equally likely digits, each predicted with certainty: exp(log 2) = 2.
    two = np.eye(10)[np.arange(1000) % 2]
    mean, std = gm.inception_score(two)
    assert mean == pytest.approx(2.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-9)


def test_classifier_cache_is_reused_and_invalidated(mnist_root, monkeypatch, capsys):
    data = gm.load_mnist(mnist_root)
    cache = mnist_root / "cache" / "mnist_classifier.pt"
    _, acc = gm.load_or_train_classifier(data, mnist_root, torch.device("cpu"))
    assert cache.is_file() and 0.0 <= acc <= 1.0
    assert not (mnist_root / "MNIST" / "cache").exists()

    def must_not_train(*a, **k):
        raise AssertionError("retrained although the cache matches")

    with monkeypatch.context() as m:
        m.setattr(gm, "train_classifier", must_not_train)
        model, cached_acc = gm.load_or_train_classifier(data, mnist_root, torch.device("cpu"))
    assert cached_acc == acc and not model.training
    # Different training data -> different fingerprint -> retrain.
    changed = dict(data, train_labels=(data["train_labels"] + 1) % 10)
    gm.load_or_train_classifier(changed, mnist_root, torch.device("cpu"))
    assert "retraining" in capsys.readouterr().out
    saved = torch.load(cache, weights_only=True)
    assert saved["fingerprint"] == gm.data_fingerprint(changed)


# ---------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--d-steps", "0"], "--d-steps must be >= 1"),
        (["--batch-size", "1"], "--batch-size must be >= 2"),
        (["--ema-decay", "1.0"], "--ema-decay"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--d-dropout", "1.0"], "--d-dropout must be in [0, 1)"),
        (["--real-label", "0.5"], "--real-label must be in (0.5, 1]"),
        (["--r1-gamma", "-1"], "--r1-gamma must be >= 0"),
        (["--r1-every", "0"], "--r1-every must be >= 1"),
        (["--d-lr-scale", "0"], "--d-lr-scale must be > 0"),
        (["--top-k", "0"], "--top-k must be in (0, 1]"),
        (["--top-k-decay", "1.5"], "--top-k-decay must be in (0, 1]"),
        (["--drs-percentile", "100"], "--drs-percentile must be in [0, 100)"),
        (["--drs-burn-in", "0"], "--drs-burn-in must be >= 1"),
        (["--generate", "5"], "--generate needs --checkpoint"),
        (["--samples-out", "x.npy"], "only used with --generate"),
        (["--eval-only"], "--eval-only needs --checkpoint"),
        (["--eval-only", "--generate", "3"], "separate modes"),
        (["--resume", "/nonexistent/checkpoint.pt"], "does not exist"),
    ],
)
def test_impossible_flags_exit_2(flags, message, capsys):
    with pytest.raises(SystemExit) as exc:
        gm.main(flags)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_batch_larger_than_dataset_is_rejected(mnist_root, tmp_path):
    with pytest.raises(SystemExit) as exc:
        gm.main(["--data-root", str(mnist_root), "--out", str(tmp_path), "--batch-size", "1000"])
    assert "larger than the 512 training images" in str(exc.value.code)


def test_resume_continues_the_run(mnist_root, tmp_path):
    """A run split in two by --resume sees the same batches and noise as an uninterrupted one.

    Two identical runs on this CPU agree only to ~1e-4 (BLAS kernels are not bit-reproducible
    across calls, and GAN training amplifies the drift), while a different RNG stream (another
    seed, or a resume that loses the RNG/optimizer state) moves the losses by several percent
    within a few steps; the tolerance sits between the two."""
    common = ["--data-root", str(mnist_root), "--out", str(tmp_path), "--eval-samples", "20"]
    # Constant LR: with --lr-decay linear the schedule is planned over --epochs, so a 1-epoch
    # run resumed to 2 epochs is (by design) not the same schedule as a 2-epoch run.
    common += ["--log-every", "1", "--sample-every", "100", "--lr-decay", "none"]
    gm.main([*common, "--run-name", "straight", "--epochs", "2"])
    gm.main([*common, "--run-name", "split", "--epochs", "1"])
    split_ckpt = tmp_path / "gan_mnist" / "split" / "checkpoint.pt"
    assert torch.load(split_ckpt, weights_only=False)["epoch"] == 1
    gm.main([*common, "--epochs", "2", "--resume", str(split_ckpt)])
    a = torch.load(tmp_path / "gan_mnist" / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(split_ckpt, weights_only=False)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 16
    ha, hb = a["history"], b["history"]
    assert [h["step"] for h in ha] == [h["step"] for h in hb] == list(range(1, 17))
    for ra, rb in zip(ha[:10], hb[:10]):  # through the resume point (after step 8) and beyond
        for key in ("d_loss", "recon"):
            assert rb[key] == pytest.approx(ra[key], rel=5e-3), (ra["step"], key)
    log = (tmp_path / "gan_mnist" / "split" / "log.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in log if "d_loss" in json.loads(line)]
    assert steps == list(range(1, 17))  # the resumed run appends to the same log
    # The notes preset's default R1 penalty (lazy, every 4th D step) is part of what resumes.
    assert a["config"]["r1_gamma"] == 0.1 and a["config"]["r1_every"] == 4
    assert a["config"]["sampler"] == b["config"]["sampler"] == "drs"  # the notes preset's


def test_sampler_defaults_to_the_run_then_the_preset():
    def resolve(cfg, *flags):
        return gm.sampling_config(cfg, gm.build_parser().parse_args(list(flags)))["sampler"]

    assert resolve({"preset": "notes"}) == "drs"  # a notes run saved before DRS existed
    assert resolve({"preset": "classic"}) == "g"  # DRS measured worse without R1
    assert resolve({"preset": "notes", "sampler": "g"}) == "g"  # the run's own choice
    assert resolve({"preset": "classic", "sampler": "g"}, "--sampler", "drs") == "drs"
    cfg = gm.sampling_config({"preset": "notes"}, gm.build_parser().parse_args([]))
    assert cfg["drs_percentile"] == 80.0 and cfg["drs_burn_in"] == 10000


# ---------------------------------------------------------------------------- smoke run


def test_smoke_run_writes_everything_and_generates(mnist_root, tmp_path):
    out = tmp_path / "out"
    proc = run_script(
        "gan_mnist.py", "--data-root", mnist_root, "--out", out, "--run-name", "smoke", "--epochs", "2",
        "--eval-every", "1", "--eval-samples", "100", "--sample-every", "5", "--log-every", "3",
        "--preset", "classic", "--d-steps", "2", "--lr-decay", "linear", "--precision", "bfloat16",
        "--d-dropout", "0.2", "--real-label", "0.9", "--r1-gamma", "0.5", "--r1-every", "2",
        "--sampler", "drs",
    )  # fmt: skip
    assert "FID" in proc.stdout and "steps/s" in proc.stdout
    run = out / "gan_mnist" / "smoke"
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "classic" and config["steps_per_epoch"] == 512 // (64 * 2)
    assert config["autocast_dtype"] == "bfloat16" and config["d_dropout"] == 0.2
    assert config["r1_gamma"] == 0.5 and config["r1_every"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    final = metrics["final"]
    assert metrics["steps"] == 8 and [e["epoch"] for e in metrics["evals"]] == [1, 2]
    assert 1.0 <= final["is"] <= 10.0 and final["fid"] >= 0 and final["fid_floor"] >= 0
    assert math.isclose(sum(final["digit_fractions"]), 1.0, abs_tol=1e-3)
    assert set(final["variants"]) == {
        "raw/batch", "raw/running", "ema/batch", "ema/running", "ema/batch+drs"
    }  # fmt: skip
    assert final["sampler"] == "ema/batch+drs" and 0 < final["drs_acceptance"] <= 1
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"d_loss", "g_loss", "d_real", "d_fake"} <= set(log[0])
    grids = sorted(p.name for p in (run / "samples").glob("step_*.png"))
    assert grids == ["step_0000004.png", "step_0000005.png", "step_0000008.png"]
    for png in [*(run / "samples").glob("*.png"), run / "samples_final.png", run / "losses.png"]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 2
    # Linear decay: the last of the 8 steps ran at lr * (1 - 7/8).
    for key in ("g_opt", "d_opt"):
        assert ckpt[key]["param_groups"][0]["lr"] == pytest.approx(2e-4 / 8)
    assert not list(run.glob("*.tmp"))

    npy = tmp_path / "gen.npy"
    gen = run_script(
        "gan_mnist.py",
        "--generate",
        "37",
        "--checkpoint",
        run / "checkpoint.pt",
        "--samples-out",
        npy,
    )
    assert "wrote" in gen.stdout
    images = np.load(npy)
    assert images.dtype == np.uint8 and images.shape == (37, 28, 28)
    assert images.max() > images.min()
    # --eval-only re-scores the checkpoint: same noise seed and sample count as the run's final
    # evaluation, so the same numbers.
    gm.main([
        "--eval-only", "--checkpoint", str(run / "checkpoint.pt"), "--data-root", str(mnist_root),
        "--eval-samples", "100",
    ])  # fmt: skip
    again = json.loads((run / "eval_only.json").read_text())
    assert again["fid"] == pytest.approx(final["fid"], rel=1e-6)
    assert again["is"] == pytest.approx(final["is"], rel=1e-6) and again["epoch"] == 2
    assert {"label_entropy", "mean_conditional_entropy", "ambiguous_fraction"} <= set(again)
    # A single sample still gets batch statistics (drawn inside a full batch).
    gm.main(
        ["--generate", "1", "--checkpoint", str(run / "checkpoint.pt"), "--samples-out", str(npy)]
    )
    assert np.load(npy).shape == (1, 28, 28)
    # G alone and DRS draw different images from the same seed; each is reproducible.
    g_only = tmp_path / "g_only.npy"
    gm.main([
        "--generate", "37", "--checkpoint", str(run / "checkpoint.pt"), "--samples-out",
        str(g_only), "--sampler", "g",
    ])  # fmt: skip
    assert np.load(g_only).shape == (37, 28, 28)
    assert not np.array_equal(np.load(g_only), images)
    gm.main(
        ["--generate", "37", "--checkpoint", str(run / "checkpoint.pt"), "--samples-out", str(npy)]
    )
    np.testing.assert_array_equal(np.load(npy), images)


# ---------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_mnist_idx_and_gz_agree(real_mnist_root):
    raw = real_mnist_root / "MNIST" / "raw"
    data = gm.load_mnist(real_mnist_root)
    assert data["train_images"].shape == (60000, 28, 28) and data["test_images"].shape == (
        10000,
        28,
        28,
    )
    assert set(np.unique(data["train_labels"])) == set(range(10))
    gz = raw / "t10k-labels-idx1-ubyte.gz"
    if gz.exists():
        np.testing.assert_array_equal(gm.read_idx(gz), data["test_labels"])


@pytest.mark.realdata
def test_real_mnist_cached_classifier_is_accurate(real_mnist_root):
    """The cached evaluation classifier (trained by `--train-classifier-only`) passes 99%."""
    path = real_mnist_root / "cache" / "mnist_classifier.pt"
    if not path.is_file():
        pytest.skip("no cached classifier (run: python gan_mnist.py --train-classifier-only)")
    data = gm.load_mnist(real_mnist_root)
    saved = torch.load(path, weights_only=True)
    if saved.get("fingerprint") != gm.data_fingerprint(data):
        pytest.skip("cached classifier is stale")
    model = gm.DigitClassifier(gm.CLASSIFIER_CONFIG["feature_dim"])
    model.load_state_dict(saved["state_dict"])
    x = gm.images_to_tensor(data["test_images"], torch.device("cpu"))
    y = torch.from_numpy(data["test_labels"].astype(np.int64))
    assert gm.classifier_accuracy(model, x, y) >= 0.99
