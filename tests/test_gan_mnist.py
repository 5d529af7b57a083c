"""Tests for gan_mnist.py: data checks, the losses and the training step against references,
the planted-bug guards (L1 sign, EMA warm-up, R1 weight), the FID / IS maths, DRS, and the
reproducibility promises (the evaluation classifier's cache, SIGKILL + --resume)."""

from __future__ import annotations

import gzip
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, _write_idx, run_script, write_tiny_mnist

import gan_mnist as gm

# A run of a few seconds on the tiny fixture (512 images: 8 steps per epoch).
CONTRACT = {"tiny": ["--epochs", "1", "--eval-samples", "50"], "size_flag": "--epochs",
            "data": "mnist"}  # fmt: skip
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    """Our own tiny MNIST root (the classifier cache is written into it)."""
    return write_tiny_mnist(tmp_path_factory.mktemp("gan_mnist_data"), n_train=512, n_test=256)


def nets_for(arch="notes", lr=0.0, opt=torch.optim.SGD, ema=False):
    torch.manual_seed(0)
    g, d = gm.build_generator(arch, 96), gm.build_discriminator(arch)
    e = gm.copy.deepcopy(g).requires_grad_(False) if ema else None
    return gm.Nets(g, d, opt(g.parameters(), lr=lr), opt(d.parameters(), lr=lr), e)


# ---------------------------------------------------------------------------- data


def test_read_idx_plain_and_gz_roundtrip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "x-idx3-ubyte", arr)
    with gzip.open(tmp_path / "x-idx3-ubyte.gz", "wb") as f:
        f.write((tmp_path / "x-idx3-ubyte").read_bytes())
    np.testing.assert_array_equal(gm.read_idx(tmp_path / "x-idx3-ubyte"), arr)
    np.testing.assert_array_equal(gm.read_idx(tmp_path / "x-idx3-ubyte.gz"), arr)


def test_read_idx_refuses_bad_magic_wrong_size_and_wrong_checksum(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04" + bytes(16))
    with pytest.raises(gm.RunError, match="bad magic"):
        gm.read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "short", np.zeros((3, 28, 28), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-10])
    with pytest.raises(gm.RunError, match="header says"):
        gm.read_idx(tmp_path / "short")
    # MNIST's full size (10,000 test labels) but not its bytes: the checksum catches it.
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(10_000, np.uint8))
    with pytest.raises(gm.RunError, match="checksum"):
        gm.read_idx(tmp_path / "t10k-labels-idx1-ubyte")


def test_load_mnist_accepts_gz_only(tmp_path):
    root = write_tiny_mnist(tmp_path, n_train=20, n_test=10)
    for name in gm.MNIST_FILES.values():
        (root / "MNIST" / "raw" / name).unlink()
    data = gm.load_mnist(root)
    assert data["train_images"].shape == (20, 28, 28) and data["test_labels"].shape == (10,)


def test_missing_data_names_every_file_and_leaves_no_folder(tmp_path, monkeypatch):
    import torchvision

    def offline(root, **kwargs):  # torchvision makes the folder, then fails to download
        (tmp_path / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
        print("Downloading ... failed")
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(gm.RunError) as exc:
        gm.load_mnist(tmp_path)
    for name in gm.MNIST_FILES.values():
        assert name in str(exc.value)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- models and losses


def test_model_shapes_and_output_ranges():
    for arch, latent, lo in (("notes", 96, 0.0), ("classic", 100, -1.0)):
        g, d = gm.build_generator(arch, latent), gm.build_discriminator(arch)
        x = g(torch.randn(8, latent) * 10)
        assert x.shape == (8, 784) and x.min() >= lo and x.max() <= 1.0
        assert d(x).shape == (8, 1)
    widths = [m.out_features for m in gm.build_discriminator("notes") if isinstance(m, torch.nn.Linear)]  # fmt: skip
    assert widths == [512, 256, 128, 64, 32, 1]
    classic_bn = [m for m in gm.build_generator("classic", 100) if isinstance(m, torch.nn.BatchNorm1d)]  # fmt: skip
    assert [m.num_features for m in classic_bn] == [256, 512, 1024]  # none after the first block
    assert all(m.eps == 0.8 for m in classic_bn)


def test_losses_match_bce_on_probabilities():
    real, fake = torch.randn(32, 1), torch.randn(32, 1)
    d_ref = F.binary_cross_entropy(torch.sigmoid(real), torch.ones_like(real)) + F.binary_cross_entropy(torch.sigmoid(fake), torch.zeros_like(fake))  # fmt: skip
    torch.testing.assert_close(gm.discriminator_loss(real, fake), d_ref)
    torch.testing.assert_close(gm.generator_loss(fake, "nonsaturating"), -torch.log(torch.sigmoid(fake)).mean())  # fmt: skip
    torch.testing.assert_close(gm.generator_loss(fake, "minimax"), torch.log(1 - torch.sigmoid(fake)).mean())  # fmt: skip
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


@pytest.mark.parametrize("step", [0, 20])
def test_train_step_warms_the_ema_up(step):
    """decay_t = (1 + t) / (10 + t) before the cap: at step 0 the EMA moves 90 % of the way to G
    (without the warm-up it would move 0.01 %), at step 20 by 9/30."""
    nets = nets_for(lr=1e-2, opt=torch.optim.Adam, ema=True)
    with torch.no_grad():
        for p in nets.ema.parameters():
            p.add_(1.0)  # make the EMA and G differ
    before = [p.clone() for p in nets.ema.parameters()]
    gm.train_step(nets, [torch.rand(16, 784)], step, gm.StepConfig(96, ema_decay=0.9999))
    decay = (1 + step) / (10 + step)
    assert decay == gm.ema_decay_at(step, 0.9999)
    for e, b, p in zip(nets.ema.parameters(), before, nets.g.parameters()):
        torch.testing.assert_close(e, decay * b + (1 - decay) * p.detach())
    assert gm.ema_decay_at(10**6, 0.9999) == 0.9999


class _ConstG(torch.nn.Module):
    """A 'generator' that is one learnable image, whatever z."""

    def __init__(self):
        super().__init__()
        self.image = torch.nn.Parameter(torch.full((784,), 0.5))

    def forward(self, z):
        return self.image.expand(len(z), 784)


def test_l1_term_pulls_g_towards_the_data():
    """G's loss is adv + w |G(z) - x|: the L1 term's gradient on a constant image b is
    w sign(b - x) / (B 784) summed over the batch. A flipped sign fails here."""
    real = torch.rand(16, 784)
    grads = {}
    for w in (0.0, 0.05):
        torch.manual_seed(0)
        g, d = _ConstG(), gm.build_discriminator("notes")
        nets = gm.Nets(g, d, torch.optim.SGD(g.parameters(), lr=0.0), torch.optim.SGD(d.parameters(), lr=0.0))  # fmt: skip
        stats = gm.train_step(nets, [real], 0, gm.StepConfig(96, recon_weight=w))
        grads[w] = g.image.grad.clone()
    expected = 0.05 * torch.sign(0.5 - real).sum(0) / real.numel()
    torch.testing.assert_close(grads[0.05] - grads[0.0], expected)
    torch.testing.assert_close(stats["recon"], (0.5 - real).abs().mean())


def test_sample_uses_batch_statistics_and_keeps_state():
    torch.manual_seed(0)
    g = gm.build_generator("notes", 96)
    for _ in range(3):
        g(torch.randn(16, 96))  # non-default running statistics
    g.eval()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    z = torch.randn(64, 96)
    out = gm.sample(g, z, chunk=32)
    assert all(torch.equal(v, before[k]) for k, v in g.state_dict().items()) and not g.training
    with torch.no_grad():
        g.train()
        torch.testing.assert_close(out, torch.cat([g(z[:32]), g(z[32:])]))


def test_train_step_does_k_d_updates_per_g_update():
    nets = nets_for(lr=1e-3, opt=torch.optim.Adam)
    g_before = [p.clone() for p in nets.g.parameters()]
    stats = gm.train_step(nets, [torch.rand(16, 784) for _ in range(3)], 0, gm.StepConfig(96, recon_weight=0.05))  # fmt: skip
    assert {int(s["step"]) for s in nets.d_opt.state.values()} == {3}
    assert {int(s["step"]) for s in nets.g_opt.state.values()} == {1}
    assert all(not torch.equal(a, b) for a, b in zip(g_before, nets.g.parameters()))
    assert set(stats) == {"d_loss", "g_loss", "recon", "d_real", "d_fake"}


def test_g_update_skips_d_weight_gradients_and_restores_d():
    nets = nets_for(lr=1e-3, opt=torch.optim.Adam)
    seen = []
    nets.d[0].weight.register_hook(lambda grad: seen.append(grad.clone()))
    gm.train_step(nets, [torch.rand(16, 784) for _ in range(2)], 1, gm.StepConfig(96))
    assert len(seen) == 2  # the two D updates, none from G's update
    torch.testing.assert_close(nets.d[0].weight.grad, seen[-1])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gm, "generator_loss", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
        with pytest.raises(RuntimeError, match="boom"):
            gm.train_step(nets, [torch.rand(16, 784)], 1, gm.StepConfig(96))
    assert all(p.requires_grad for p in nets.d.parameters())


def test_train_step_d_loss_equals_separate_real_and_fake_passes():
    nets = nets_for()
    d_ref, g_ref = gm.copy.deepcopy(nets.d), gm.copy.deepcopy(nets.g)
    real = torch.rand(16, 784)
    torch.manual_seed(1)
    stats = gm.train_step(nets, [real], 1, gm.StepConfig(96))
    torch.manual_seed(1)
    with torch.no_grad():
        expected = gm.discriminator_loss(d_ref(real), d_ref(g_ref(torch.randn(16, 96))))
    torch.testing.assert_close(stats["d_loss"], expected)


def test_train_step_bfloat16_autocast_keeps_float32_state():
    torch.manual_seed(0)
    g, d = gm.build_generator("notes", 96), gm.build_discriminator("notes")
    cfg = dict(lr=3e-4, betas=(0.4, 0.8), weight_decay=1e-4)
    nets = gm.Nets(g, d, gm.make_adam(g, cfg), gm.make_adam(d, cfg))
    sc = gm.StepConfig(96, recon_weight=0.05, r1_gamma=0.1, autocast_dtype=torch.bfloat16)
    stats = gm.train_step(nets, [torch.rand(16, 784)], 0, sc)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in stats.values())
    assert all(p.dtype == torch.float32 for p in [*g.parameters(), *d.parameters()])


def test_r1_penalty_is_half_gamma_squared_input_gradient():
    """For D(x) = w.x + b the input gradient is w, so R1 = gamma/2 ||w||^2; for the GELU MLP it
    must match the per-sample Jacobian row."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(784, 1)
    torch.testing.assert_close(gm.r1_penalty(lin, torch.rand(8, 784), 10.0), 5.0 * lin.weight.pow(2).sum())  # fmt: skip
    d = gm.build_discriminator("notes").double()
    x = torch.rand(3, 784, dtype=torch.float64)
    rows = [torch.autograd.functional.jacobian(lambda v: d(v[None])[0, 0], xi) for xi in x]
    torch.testing.assert_close(gm.r1_penalty(d, x, 2.0), torch.stack([r.pow(2).sum() for r in rows]).mean())  # fmt: skip
    gm.r1_penalty(lin, torch.rand(4, 784), 1.0).backward()  # create_graph: reaches the weights
    torch.testing.assert_close(lin.weight.grad, lin.weight.detach())


@pytest.mark.parametrize("step, applied", [(0, True), (1, False), (4, True)])
def test_lazy_r1_joins_every_nth_d_update_with_n_times_the_weight(step, applied):
    """With r1_every 4 the penalty, scaled by 4, joins D's gradient on D updates 0, 4, ... The
    comparison is relative (1e-3 of its norm): half or double the weight fails it."""
    grads = {}
    for gamma in (0.0, 3.0):
        nets = nets_for()
        real = torch.rand(16, 784, generator=torch.Generator().manual_seed(5))
        gm.train_step(nets, [real], step, gm.StepConfig(96, r1_gamma=gamma, r1_every=4))
        grads[gamma] = nets.d[0].weight.grad.clone()
    extra = grads[3.0] - grads[0.0]
    if not applied:
        assert torch.equal(extra, torch.zeros_like(extra))
        return
    expected = torch.autograd.grad(gm.r1_penalty(nets.d, real, 12.0), nets.d[0].weight)[0]

    def rel_err(value):
        return ((extra - value).norm() / value.norm()).item()

    assert expected.norm() > 0 and rel_err(expected) < 1e-3
    assert rel_err(0.5 * expected) > 0.1 and rel_err(2.0 * expected) > 0.1


# ---------------------------------------------------------------------------- DRS


def test_drs_acceptance_logit_is_the_logit_of_the_density_ratio():
    logits = torch.tensor([-5.0, -1.0, 0.0, 1.5, 2.0], dtype=torch.float64)
    keep = torch.sigmoid(gm.drs_acceptance_logit(logits, logits.max()))
    torch.testing.assert_close(keep, torch.exp(logits - logits.max()), atol=2e-6, rtol=1e-5)
    assert torch.isfinite(gm.drs_acceptance_logit(torch.tensor([9.0]), logits.max())).all()


class _UniformProposal(torch.nn.Module):
    def forward(self, z):  # z ~ N(0, 1) -> Phi(z) ~ Uniform(0, 1), a one-pixel 'generator'
        return torch.special.ndtr(z[:, :1])


class _RatioCritic(torch.nn.Module):
    def forward(self, x):  # the optimal logit log p_data / p_g for p_data = 2x, p_g uniform
        return torch.log(2.0 * x.clamp_min(1e-12))


def test_drs_sample_turns_the_proposal_into_the_target_density():
    """With an optimal D and gamma = 0 DRS is exact rejection sampling: uniform proposals become
    the density 2x (mean 2/3, CDF x^2), and half of them are kept (1 / M, M = 2)."""
    rng = torch.Generator().manual_seed(0)
    critic = _RatioCritic().train()
    x, stats = gm.drs_sample(_UniformProposal(), critic, 20000, 1, 64, None, 20000, rng, CPU)
    x = x.flatten().double()
    assert x.shape == (20000,) and critic.training
    assert abs(x.mean().item() - 2 / 3) < 0.01
    grid = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    assert ((x[None, :] <= grid[:, None]).double().mean(1) - grid**2).abs().max() < 0.015
    assert abs(stats["drs_acceptance"] - 0.5) < 0.02 and stats["drs_gamma"] == 0.0
    rates = [gm.drs_sample(_UniformProposal(), critic, 2000, 1, 64, q, 5000, rng, CPU)[1]["drs_acceptance"]
             for q in (20.0, 80.0)]  # fmt: skip
    assert rates[0] > rates[1]  # a higher percentile keeps fewer


# ---------------------------------------------------------------------------- evaluation maths


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    a, b = rng.standard_normal((12, 12)), rng.standard_normal((12, 12))
    c1, c2 = a @ a.T / 12 + 0.1 * np.eye(12), b @ b.T / 12 + 0.1 * np.eye(12)
    reference = (mu1 - mu2) @ (mu1 - mu2) + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)  # fmt: skip
    assert gm.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(reference, rel=1e-8)
    assert gm.frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-8)
    low_rank = np.outer(mu1, mu1)
    assert 0 <= gm.frechet_distance(mu1, low_rank, mu1, low_rank) < 1e-6


def test_inception_score_extremes_and_its_entropy_split():
    assert gm.inception_score(np.eye(10)[np.arange(1000) % 10])[0] == pytest.approx(10.0)
    assert gm.inception_score(np.eye(10)[np.zeros(1000, dtype=int)])[0] == pytest.approx(1.0)
    assert gm.inception_score(np.full((1000, 10), 0.1))[0] == pytest.approx(1.0)
    mean, std = gm.inception_score(np.eye(10)[np.arange(1000) % 2])
    assert mean == pytest.approx(2.0) and std == pytest.approx(0.0, abs=1e-9)
    logits = np.random.default_rng(0).normal(size=(500, 10)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    parts = gm.label_entropies(probs)
    one_split = gm.inception_score(probs, splits=1)[0]
    assert math.exp(parts["label_entropy"] - parts["mean_conditional_entropy"]) == pytest.approx(one_split)  # fmt: skip
    assert gm.label_entropies(np.full((10, 10), 0.1))["ambiguous_fraction"] == 1.0


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


def test_autocast_dtype(monkeypatch):
    monkeypatch.setattr(gm, "cpu_has_native_bf16", lambda: False)
    assert gm.autocast_dtype(CPU) is None  # emulated bf16 would be slower
    monkeypatch.setattr(gm, "cpu_has_native_bf16", lambda: True)
    assert gm.autocast_dtype(CPU) is torch.bfloat16


def test_classifier_cache_is_reused_invalidated_and_never_moves_the_global_rng(tmp_path, capsys):
    root = write_tiny_mnist(tmp_path, n_train=256, n_test=64)
    data = gm.load_mnist(root)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    _, acc = gm.load_or_train_classifier(data, root, CPU)  # trains it
    assert torch.equal(torch.get_rng_state(), state)
    model, cached_acc = gm.load_or_train_classifier(data, root, CPU)  # loads it
    assert torch.equal(torch.get_rng_state(), state)
    assert cached_acc == acc and not model.training
    assert (root / "cache" / "mnist_classifier.pt").is_file()
    changed = dict(data, train_labels=(data["train_labels"] + 1) % 10)
    gm.load_or_train_classifier(changed, root, CPU)
    assert "retraining" in capsys.readouterr().out


# ---------------------------------------------------------------------------- command line


@pytest.mark.parametrize("flags, message", [
    (["--d-steps", "0"], "--d-steps"), (["--batch-size", "1"], "--batch-size"),
    (["--ema-decay", "1.0"], "--ema-decay"), (["--r1-gamma", "-1"], "--r1-gamma"),
    (["--recon-weight", "-1"], "--recon-weight"), (["--drs-percentile", "100"], "--drs-percentile"),
    (["--eval-samples", "5"], "--eval-samples"), (["--generate", "5"], "--checkpoint"),
    (["--samples-out", "x.npy"], "--samples-out"), (["--eval-only"], "--checkpoint"),
    (["--eval-only", "--generate", "3"], "separate modes"), (["--epoch", "3"], "--epoch"),
])  # fmt: skip
def test_impossible_flags_exit_2_naming_the_flag(flags, message, capsys):
    assert gm.run_cli(gm.main, flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_resume_refuses_flags_that_would_fork_the_run(tmp_path, capsys):
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"")
    assert gm.run_cli(gm.main, ["--resume", str(ckpt), "--epochs", "5"]) == 2
    assert "drop --epochs" in capsys.readouterr().err


def test_same_seed_same_weights_with_and_without_the_classifier_cache(tmp_path):
    """The first run trains the evaluation classifier, the second finds it cached: both must
    end with the same weights and metrics (the classifier never touches the run's RNG)."""
    root = write_tiny_mnist(tmp_path / "data", n_train=512, n_test=256)
    ckpts = []
    for name in ("cold", "warm"):
        gm.main(["--data-root", root, "--out", tmp_path / "out", "--run-name", name,
                 "--epochs", "2", "--eval-samples", "50", "--seed", "3"])  # fmt: skip
        ckpts.append(torch.load(tmp_path / "out" / "gan_mnist" / name / "checkpoint.pt", weights_only=False))  # fmt: skip
        assert (root / "cache" / "mnist_classifier.pt").is_file()
    for key in ("generator", "discriminator", "ema"):
        for name, tensor in ckpts[0][key].items():
            assert torch.equal(tensor, ckpts[1][key][name]), (key, name)
    metrics = [json.loads((tmp_path / "out" / "gan_mnist" / n / "metrics.json").read_text())["final"] for n in ("cold", "warm")]  # fmt: skip
    assert metrics[0] == metrics[1]


def test_sigkill_then_resume_ends_bit_identical(tmp_path):
    """Uninterrupted vs SIGKILLed after the first checkpoint (in epoch 2 or later) and resumed
    with --resume: every weight tensor, optimiser state and EMA tensor must be equal."""
    root = write_tiny_mnist(tmp_path / "data", n_train=2048, n_test=256)
    common = ["--data-root", root, "--out", tmp_path / "out", "--epochs", "4", "--eval-samples", "50", "--seed", "5"]  # fmt: skip
    run_script("gan_mnist.py", *common, "--run-name", "straight", timeout=600)
    run_dir = tmp_path / "out" / "gan_mnist" / "killed"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "gan_mnist.py"), *map(str, common), "--run-name", "killed"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while (
        not (run_dir / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline
    ):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    at_kill = torch.load(run_dir / "checkpoint.pt", weights_only=False)["epoch"]
    assert 1 <= at_kill < 4 and not (run_dir / "metrics.json").exists()
    run_script("gan_mnist.py", "--resume", run_dir / "checkpoint.pt", timeout=600)
    a = torch.load(
        tmp_path / "out" / "gan_mnist" / "straight" / "checkpoint.pt", weights_only=False
    )
    b = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 4 * 32
    for key in ("generator", "discriminator", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)
    for key in ("g_opt", "d_opt"):
        for i, state in a[key]["state"].items():
            assert all(torch.equal(v, b[key]["state"][i][s]) for s, v in state.items()), (key, i)
    assert a["history"] == b["history"]
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "d_loss" in r] == [r["step"] for r in a["history"]]


def test_smoke_run_writes_everything_then_generates_and_rescores(mnist_root, tmp_path):
    out = tmp_path / "out"
    proc = run_script("gan_mnist.py", "--data-root", mnist_root, "--out", out, "--run-name", "s",
                      "--epochs", "2", "--eval-every", "1", "--eval-samples", "100",
                      "--d-steps", "2")  # fmt: skip
    assert "FID" in proc.stdout
    run = out / "gan_mnist" / "s"
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "recipe" and config["steps_per_epoch"] == 512 // (64 * 2)
    assert config["sampler"] == "drs" and config["r1_gamma"] == 0.1 and config["r1_every"] == 4
    dtype = gm.autocast_dtype(CPU)
    assert config["autocast_dtype"] == ("bfloat16" if dtype is torch.bfloat16 else "float32")
    metrics = json.loads((run / "metrics.json").read_text())
    final = metrics["final"]
    assert metrics["steps"] == 8 and [e["epoch"] for e in metrics["evals"]] == [1, 2]
    assert 1.0 <= final["is"] <= 10.0 and final["fid"] >= 0 and 0 < final["drs_acceptance"] <= 1
    assert math.isclose(sum(final["digit_fractions"]), 1.0, abs_tol=1e-3)
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["epoch_001.png", "epoch_002.png"]  # fmt: skip
    for png in [*(run / "samples").glob("*.png"), run / "samples_final.png", run / "losses.png"]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    for key in ("g_opt", "d_opt"):  # linear decay: the last of 8 steps ran at lr (1 - 7/8)
        assert ckpt[key]["param_groups"][0]["lr"] == pytest.approx(3e-4 / 8)
    assert not list(run.glob("*.tmp"))

    npy, g_only = tmp_path / "gen.npy", tmp_path / "g.npy"
    gm.main(["--generate", "37", "--checkpoint", run / "checkpoint.pt", "--samples-out", npy])
    images = np.load(npy)
    assert images.dtype == np.uint8 and images.shape == (37, 28, 28) and images.max() > images.min()
    gm.main(["--generate", "37", "--checkpoint", run / "checkpoint.pt", "--samples-out", g_only, "--sampler", "g"])  # fmt: skip
    assert not np.array_equal(np.load(g_only), images)
    gm.main(["--generate", "37", "--checkpoint", run / "checkpoint.pt", "--samples-out", npy])
    np.testing.assert_array_equal(np.load(npy), images)
    # --eval-only: the run's evaluation seed and sample count, so the same numbers.
    gm.main(["--eval-only", "--checkpoint", run / "checkpoint.pt", "--eval-samples", "100"])
    again = json.loads((run / "eval_only.json").read_text())
    assert again["fid"] == final["fid"] and again["is"] == final["is"] and again["epoch"] == 2


def test_notes_and_classic_presets_train_as_the_notes_wrote_them(mnist_root, tmp_path):
    for preset, latent in (("notes", 96), ("classic", 100)):
        gm.main(["--data-root", mnist_root, "--out", tmp_path, "--run-name", preset, "--preset",
                 preset, "--epochs", "1", "--eval-samples", "50"])  # fmt: skip
        ckpt = torch.load(tmp_path / "gan_mnist" / preset / "checkpoint.pt", weights_only=False)
        cfg = ckpt["config"]
        assert cfg["latent_dim"] == latent and cfg["r1_gamma"] == 0 and cfg["ema_decay"] == 0
        assert cfg["sampler"] == "g" and cfg["lr_decay"] == "none" and ckpt["ema"] is None
        assert ckpt["g_opt"]["param_groups"][0]["lr"] == gm.PRESETS[preset]["lr"]


# ---------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_mnist_passes_its_checksums_and_idx_and_gz_agree(real_mnist_root):
    data = gm.load_mnist(real_mnist_root)
    assert data["train_images"].shape == (60000, 28, 28) and data["test_images"].shape == (10000, 28, 28)  # fmt: skip
    gz = real_mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    if gz.exists():
        np.testing.assert_array_equal(gm.read_idx(gz), data["test_labels"])


@pytest.mark.realdata
def test_real_mnist_classifier_is_accurate(real_mnist_root):
    """The evaluation classifier as a run trains it (copied cache or trained here) passes 99 %."""
    cache = real_mnist_root / "cache" / "mnist_classifier.pt"
    if not cache.is_file():
        pytest.skip("no cached classifier in data/cache (a first gan_mnist.py run makes it)")
    data = gm.load_mnist(real_mnist_root)
    saved = torch.load(cache, weights_only=True)
    if saved.get("fingerprint") != gm.data_fingerprint(data):
        pytest.skip("the cached classifier is from another version")
    model = gm.new_classifier(CPU)
    model.load_state_dict(saved["state_dict"])
    x = gm.images_to_tensor(data["test_images"], CPU)
    assert gm.classifier_accuracy(model, x, torch.from_numpy(data["test_labels"].astype(np.int64))) >= 0.99  # fmt: skip
