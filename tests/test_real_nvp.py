"""Tests for real_nvp.py: the exact maths of every flow layer (inverse and log-determinant
against brute force), masks and squeeze, bits/dim, the initialisation trap, toy training against
the generator's entropy; the command line (usage errors, presets, data validation, figures),
same-seed and kill-and-resume runs that must end bit-identical, and a 2-process gloo torchrun."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import REPO_ROOT

import real_nvp as R


@pytest.fixture(autouse=True)
def _one_thread():
    """Other test files run beside these on 2 cores: one thread avoids oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomize(model: nn.Module, seed: int = 0, noise: float = 0.05) -> nn.Module:
    """Move every parameter off its initial value (zero last layers would make each coupling
    the identity and the tests trivial) and give batch norms non-trivial running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in model.modules():
            if isinstance(m, (R.FlowBatchNorm, nn.modules.batchnorm._BatchNorm)):
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model.eval()


def brute_force_logdet(f, x: torch.Tensor) -> torch.Tensor:
    """log|det| of the full autograd Jacobian of x -> f(x)[0] for a single example."""
    flat = x.flatten()
    jac = torch.autograd.functional.jacobian(lambda v: f(v.view_as(x))[0].flatten(), flat)
    return torch.linalg.slogdet(jac)[1]


def conv_coupling(mask: torch.Tensor) -> R.AffineCoupling:
    c = mask.shape[1]
    return R.AffineCoupling(mask, R.ResNetST(2 * c, 6, 2 * c, 1))


LAYERS = {
    "checkerboard_coupling": lambda: (conv_coupling(R.checkerboard_mask(2, 4, 4, 0)), (2, 4, 4)),
    "channel_coupling": lambda: (conv_coupling(R.channel_mask(4, 2, 2, 1)), (4, 2, 2)),
    "actnorm": lambda: (R.ActNorm(3, 4), (3, 2, 3)),
    "batchnorm_eval": lambda: (R.FlowBatchNorm(3, 4), (3, 2, 3)),
    "squeeze": lambda: (R.Squeeze(), (2, 4, 4)),
    "realnvp_act": lambda: (R.RealNVP((1, 8, 8), 2, 4, 1, "act"), (1, 8, 8)),
    "realnvp_batch": lambda: (R.RealNVP((1, 8, 8), 2, 4, 1, "batch"), (1, 8, 8)),
    "realnvp_none_rgb": lambda: (R.RealNVP((3, 4, 4), 1, 4, 1, "none"), (3, 4, 4)),
    "toy_batch": lambda: (R.ToyRealNVP(4, 16, "batch"), (2,)),
    "toy_act": lambda: (R.ToyRealNVP(4, 16, "act"), (2,)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_inverse_of_forward_is_identity(name):
    torch.manual_seed(0)
    layer, shape = LAYERS[name]()
    randomize(layer)
    x = torch.randn(5, *shape)
    with torch.no_grad():
        y, logdet = layer(x)
        assert logdet.shape == (5,)
        if name.startswith(("check", "channel", "realnvp", "toy")):
            assert (y.reshape(5, -1) - x.reshape(5, -1)).abs().max() > 1e-2  # not the identity
        err = (layer.inverse(y) - x).abs().max().item()
    assert err < 1e-4, f"{name}: max |g(f(x)) - x| = {err}"


def test_bf16_st_nets_keep_each_coupling_exactly_invertible():
    """bf16 s/t nets (--st-dtype auto on native hardware) run only s/t under autocast: one
    coupling's inverse recomputes the same s, t from the same masked input, so it is exact; a deep
    stack drifts by bf16 rounding of slightly different inputs, still far below one grey level."""
    torch.manual_seed(0)
    layer = randomize(conv_coupling(R.checkerboard_mask(2, 4, 4, 0)))
    x = torch.randn(5, 2, 4, 4)
    with torch.no_grad():
        y32, ld32 = layer(x)
        layer.st_bf16 = True
        y16, ld16 = layer(x)
        assert (y16 - y32).abs().max() > 1e-6  # bf16 really ran
        assert (layer.inverse(y16) - x).abs().max() < 1e-4
        assert torch.allclose(ld16, ld32, rtol=0.05, atol=0.05)
    model = randomize(R.RealNVP((1, 8, 8), 2, 4, 1, "act"))
    R.set_st_bf16(model, True)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert (model.inverse(model(x)[0]) - x).abs().max() < 1e-2


def test_st_dtype_resolution():
    args = R.parse_args(["--device", "cpu", "--st-dtype", "float32"])
    assert not R.st_uses_bf16(args)
    auto = R.parse_args(["--device", "cpu"])
    assert R.st_uses_bf16(auto) == R.cpu_has_native_bf16()
    assert not R.st_uses_bf16(R.parse_args(["--device", "cpu", "--dataset", "moons"]))


@pytest.mark.parametrize("name", list(LAYERS))
def test_logdet_matches_autograd_jacobian(name):
    torch.manual_seed(1)
    layer, shape = LAYERS[name]()
    randomize(layer).double()
    x = torch.randn(1, *shape, dtype=torch.float64)
    with torch.no_grad():
        logdet = layer(x)[1][0]
    brute = brute_force_logdet(layer, x)
    rel = abs(float(logdet - brute)) / max(abs(float(brute)), 1.0)
    assert rel < 1e-3, f"{name}: log-det {float(logdet):.6f} vs brute force {float(brute):.6f}"
    if name != "squeeze":
        assert abs(float(brute)) > 1e-3  # the layer really changes volume, so this can fail


def test_logit_preprocessing_logdet_matches_finite_differences():
    torch.manual_seed(2)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64) * 0.98 + 0.01
    for alpha in (0.05, 1e-6):
        _, logdet = R.logit_transform(x, alpha)
        h = 1e-7
        deriv = (R.logit_transform(x + h, alpha)[0] - R.logit_transform(x - h, alpha)[0]) / (2 * h)
        fd = deriv.log().flatten(1).sum(1)  # the map is elementwise: diagonal Jacobian
        assert torch.allclose(logdet, fd, rtol=1e-6), (alpha, logdet, fd)
        y, _ = R.logit_transform(x, alpha)
        assert torch.allclose(R.inverse_logit(y, alpha), x, atol=1e-12)


def test_uniform_model_scores_exactly_eight_bits_per_dim():
    assert torch.equal(
        R.bits_per_dim(torch.zeros(4, dtype=torch.float64), 784),
        torch.full((4,), 8.0, dtype=torch.float64),
    )
    # A real uniform model: logistic prior on y = logit(x~) (alpha = 0) pushes forward to the
    # uniform density on [0,1)^D, so its exact log p(x~) is 0 and it must score 8.00.
    x = (
        torch.randint(0, 256, (6, 1, 28, 28)).double()
        + torch.rand(6, 1, 28, 28).double() * 0.98
        + 0.01
    ) / 256
    for alpha, expected in ((0.0, 8.0), (0.05, 8.0 - math.log2(0.9))):
        y, logdet = R.logit_transform(x, alpha)
        logistic_logpdf = (-y - 2 * torch.nn.functional.softplus(-y)).flatten(1).sum(1)
        bpd = R.bits_per_dim(logistic_logpdf + logdet, 784)
        assert torch.allclose(bpd, torch.full_like(bpd, expected), atol=1e-9), (alpha, bpd)


def test_masks_partition_and_alternate():
    for parity in (0, 1):
        a, b = R.checkerboard_mask(3, 5, 6, parity), R.checkerboard_mask(3, 5, 6, 1 - parity)
        assert torch.equal(a + b, torch.ones_like(a)) and not (a * b).any()
        # neighbours differ: a checkerboard, not stripes
        assert (a[..., 1:, :] != a[..., :-1, :]).all() and (a[..., :, 1:] != a[..., :, :-1]).all()
    ch = R.channel_mask(8, 2, 2, 0)
    assert torch.equal(ch + R.channel_mask(8, 2, 2, 1), torch.ones_like(ch))
    assert ch[:, :4].all() and not ch[:, 4:].any()
    # After un-squeezing, the channel mask is neither checkerboard: the partitions differ (Sec. 3.6).
    unsq = torch.nn.functional.pixel_shuffle(R.channel_mask(4, 3, 3, 0), 2)
    for parity in (0, 1):
        assert not torch.equal(unsq, R.checkerboard_mask(1, 6, 6, parity))
    # Inside the model consecutive couplings of a group have complementary masks.
    model = R.RealNVP((1, 28, 28), 2, 4, 1, "none")
    groups = [level.layers for level in model.levels] + [model.final.layers]
    n_couplings = 0
    for layers in groups:
        masks = [m.mask for m in layers if isinstance(m, R.AffineCoupling)]
        n_couplings += len(masks)
        for m1, m2 in zip(masks, masks[1:]):
            if m1.shape == m2.shape:
                assert torch.equal(m1 + m2, torch.ones_like(m1))
    assert n_couplings == 3 + 3 + 3 + 3 + 4  # Sec. 3.6 with two squeezes (28 -> 14 -> 7)
    assert model.z_shapes == [(2, 14, 14), (4, 7, 7), (4, 7, 7)]
    assert sum(math.prod(s) for s in model.z_shapes) == 784


def test_squeeze_unsqueeze_are_exact_inverses():
    x = torch.randn(2, 3, 8, 6)
    sq = R.Squeeze()
    y, logdet = sq(x)
    assert y.shape == (2, 12, 4, 3) and torch.equal(logdet, torch.zeros(2))
    assert torch.equal(sq.inverse(y), x)
    for c, dy, dx, i, j in ((0, 0, 0, 0, 0), (2, 1, 0, 3, 2), (1, 1, 1, 2, 1)):
        assert y[1, c * 4 + 2 * dy + dx, i, j] == x[1, c, 2 * i + dy, 2 * j + dx]


def _train_toy(model, steps: int, scale_grads: list | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        loss = -R.log_prob(model, R.sample_toy("8gaussians", 256, g)).mean()
        opt.zero_grad()
        loss.backward()
        if scale_grads is not None:
            scale_grads.append(
                [
                    m.scale.grad.abs().sum().item()
                    for m in model.modules()
                    if isinstance(m, R.AffineCoupling)
                ]
            )
        opt.step()


def test_initialisation_trap_scale_zero_never_trains_and_scale_one_does():
    x = R.sample_toy("8gaussians", 64, torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    trapped = R.ToyRealNVP(2, 16, "none", scale_init=0.0)
    grads: list = []
    _train_toy(trapped, 5, grads)
    assert all(g == 0.0 for row in grads for g in row)  # scale never receives gradient
    last_layers = [
        m.net.net[-1].weight for m in trapped.modules() if isinstance(m, R.AffineCoupling)
    ]
    assert all(w.abs().max() > 0 for w in last_layers)  # t still trains ...
    with torch.no_grad():
        assert torch.equal(trapped(x)[1], torch.zeros(64))  # ... but the flow is volume preserving

    torch.manual_seed(0)
    good = R.ToyRealNVP(2, 16, "none", scale_init=1.0)
    grads = []
    _train_toy(good, 3, grads)
    assert all(g > 0 for g in grads[-1])  # every coupling's scale gets gradient after step 1
    with torch.no_grad():
        assert good(x)[1].abs().max() > 0


@torch.no_grad()
def _test_nll(model, x):
    model.eval()
    nll = -R.log_prob(model, x)
    model.train()
    return nll


def test_toy_nll_decreases_and_never_beats_the_true_density():
    torch.manual_seed(0)
    model = R.ToyRealNVP(4, 64, "act")
    x_test = R.sample_toy("8gaussians", 4000, torch.Generator().manual_seed(11))
    true_nll = -R.toy_log_density("8gaussians", x_test)
    model.train()
    with torch.no_grad():
        model(R.sample_toy("8gaussians", 256, torch.Generator().manual_seed(4)))  # ActNorm init
    before = _test_nll(model, x_test).mean()
    _train_toy(model, 250)
    nll = _test_nll(model, x_test)
    assert nll.mean() < before - 0.1
    # Paired estimate of KL(data || model) >= 0 on the same points, minus 3 standard errors.
    diff = nll.double() - true_nll
    assert diff.mean() > -3 * diff.std() / math.sqrt(len(diff))
    entropy, se = R.toy_entropy("8gaussians", n=20000)
    assert nll.mean() > entropy - 3 * (se + nll.std() / math.sqrt(len(nll)))


@pytest.mark.parametrize("name", ["moons", "8gaussians", "checkerboard"])
def test_toy_densities_are_normalised_and_entropies_match_the_literature(name):
    lim, n = 6.0, 240
    t = torch.linspace(-lim, lim, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(t, t, indexing="xy")
    grid = torch.stack([xx.flatten(), yy.flatten()], 1)
    mass = R.toy_log_density(name, grid).exp().sum() * (t[1] - t[0]) ** 2
    assert abs(float(mass) - 1) < 0.02
    entropy, _ = R.toy_entropy(name, n=20000)
    expected = {"moons": 2.39, "8gaussians": 2.84, "checkerboard": math.log(32)}[name]
    assert abs(entropy - expected) < 0.03
    pts = R.sample_toy(name, 1000, torch.Generator().manual_seed(0))
    assert torch.isfinite(R.toy_log_density(name, pts)).all()  # samples lie in the support


def test_batchnorm_recompute_gives_plain_average_and_actnorm_inits_from_data():
    bn = R.FlowBatchNorm(2, 4)
    batches = [torch.randn(4, 2, 3, 3) * (k + 1) + k for k in range(3)]
    bn.train()
    bn(torch.randn(4, 2, 3, 3) * 50)  # stale statistics from a very different batch
    R.recompute_batchnorm_stats(bn, batches)
    expected = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(bn.running_mean.flatten(), expected, atol=1e-6)
    assert bn.momentum == 0.05 and bn.training
    an = R.ActNorm(2, 4).train()
    x = torch.randn(16, 2, 5, 5) * 3 + 7
    y, _ = an(x)
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(y.std((0, 2, 3)), torch.ones(2), atol=1e-3)
    assert float(an.initialized) == 1.0


def test_manifold_corners_are_the_four_latents():
    zs = torch.randn(4, 10)
    grid = R.manifold_latents(zs, n=5).reshape(5, 5, 10)
    for (i, j), k in {(0, 0): 0, (0, 4): 1, (4, 0): 2, (4, 4): 3}.items():
        assert torch.allclose(grid[i, j], zs[k], atol=1e-6)


# ------------------------------------------------------------------------- the command line
# A run of a few seconds on the tiny MNIST fixture (tests/test_contract.py uses it).
CONTRACT = {
    "tiny": ["--epochs", "1", "--channels", "4", "--res-blocks", "1", "--st-dtype", "float32"],
    "size_flag": "--epochs",
    "data": "mnist",
}
TINY = ["--device", "cpu", "--threads", "1", "--channels", "4", "--res-blocks", "1",
        "--st-dtype", "float32"]  # fmt: skip


def test_nan_detection_names_the_step():
    with pytest.raises(R.RunError, match="step 17"):
        R.check_finite(torch.tensor(float("nan")), 17)
    R.check_finite(torch.tensor(1.0), 3)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--epochs", "0"], "--epochs"),
        (["--dataset", "moons", "--steps", "0"], "--steps"),
        (["--logit-alpha", "0.5"], "--logit-alpha"),
        (["--generate", "4"], "--generate"),
        (["--generate", "0", "--checkpoint", "c.pt"], "--generate"),
        (["--checkpoint", "c.pt"], "--checkpoint"),
        (["--batch-size", "0"], "--batch-size"),
        (["--norm", "batch", "--batch-size", "1"], "--norm batch"),
        (["--dataset", "moons", "--temperature", "0"], "--temperature"),
        (["--preset", "paper"], "--preset"),
    ],
)
def test_impossible_flags_are_usage_errors_naming_the_flag(argv, flag, capsys):
    with pytest.raises(R.UsageError, match=flag):
        R.parse_args(argv)
    assert R.run_cli(R.main, argv) == 2
    assert flag in capsys.readouterr().err


def test_dataset_defaults_and_the_notes_preset():
    mnist = R.parse_args([])
    assert (mnist.dataset, mnist.logit_alpha, mnist.num_scales, mnist.epochs) == (
        "mnist",
        1e-6,
        2,
        10,
    )
    assert mnist.steps is None and mnist.batch_size == 64 and mnist.norm == "act"
    cifar = R.parse_args(["--dataset", "cifar10"])
    assert (cifar.logit_alpha, cifar.num_scales) == (0.05, 1)  # the paper's CIFAR-10 setup
    toy = R.parse_args(["--dataset", "moons"])
    assert (toy.steps, toy.batch_size) == (4000, 512)
    notes = R.parse_args(["--preset", "notes"])
    assert (notes.dataset, notes.channels, notes.res_blocks, notes.num_scales, notes.norm) == (
        "cifar10", 64, 8, 1, "batch")  # fmt: skip
    assert R.parse_args(["--preset", "notes", "--channels", "16"]).channels == 16
    assert R.parse_args(["--logit-alpha", "0.05"]).logit_alpha == 0.05


def test_cifar10_batches_load_from_the_torchvision_layout(tmp_path, monkeypatch):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [0, 1, 2, 3]}, f)
    train, test = R.load_image_data("cifar10", tmp_path)
    assert train.shape == (20, 3, 32, 32) and test.shape == (4, 3, 32, 32)
    with open(folder / "test_batch", "rb") as f:
        first = pickle.load(f)[b"data"][0]
    assert torch.equal(test[0, 1].flatten(), torch.from_numpy(first[1024:2048]))  # CHW rows
    (folder / "data_batch_3").write_bytes(b"\x80\x04 torn")
    with pytest.raises(R.RunError, match="data_batch_3"):
        R.load_image_data("cifar10", tmp_path)


def test_missing_or_truncated_data_is_a_run_error_naming_the_file(tmp_path, monkeypatch):
    from conftest import write_tiny_mnist

    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # offline: the download fails at once
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(R.RunError, match=r"cifar-10-batches-py/data_batch_1 is missing"):
        R.load_image_data("cifar10", empty)
    assert list(empty.iterdir()) == []  # the failed download left no folder behind
    root = write_tiny_mnist(tmp_path / "mnist")
    images = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(R.RunError, match="t10k-images-idx3-ubyte: not an MNIST image file"):
        R.load_image_data("mnist", root)


def state_of(run_dir) -> dict:
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    moments = [(s, t) for s, t in zip(a["optimizer"]["state"].values(),
                                      b["optimizer"]["state"].values())]  # fmt: skip
    assert moments and all(torch.equal(s["exp_avg"], t["exp_avg"]) for s, t in moments)


def without_times(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]


def test_same_seed_gives_bit_identical_runs_and_another_seed_does_not(tiny_mnist_root, tmp_path):
    common = [*TINY, "--data-root", tiny_mnist_root, "--out", tmp_path, "--epochs", "1"]
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        R.main([*common, "--seed", seed, "--run-name", name])
    runs = {n: tmp_path / "real_nvp" / n for n in "abc"}
    assert_same_weights(state_of(runs["a"]), state_of(runs["b"]))
    assert without_times(runs["a"]) == without_times(runs["b"])
    c = state_of(runs["c"])["model"]
    assert any(not torch.equal(v, c[k]) for k, v in state_of(runs["a"])["model"].items())


KILL_AFTER_FIRST_CHECKPOINT = """
import os, signal, sys
sys.path.insert(0, sys.argv.pop(1))
import real_nvp as R
save = R.save_checkpoint
def save_then_die(*args, **kwargs):
    save(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
R.save_checkpoint = save_then_die
sys.exit(R.run_cli(R.main))
"""


def test_sigkill_after_the_first_checkpoint_then_resume_is_bit_identical(tiny_mnist_root, tmp_path):
    # 128 steps per epoch of 4 images: the first checkpoint (step 100) is mid-epoch, and the
    # resumed run crosses the epoch's end (evaluation, new order) before it stops at 150.
    flags = ["--batch-size", "4", "--epochs", "2", "--steps", "150", "--test-limit", "64"]
    common = [*TINY, "--data-root", str(tiny_mnist_root), "--out", str(tmp_path), "--seed", "5",
              *flags]  # fmt: skip
    R.main([*common, "--run-name", "whole"])
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_FIRST_CHECKPOINT, str(REPO_ROOT), *map(str, common),
         "--run-name", "killed"], env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-2000:]
    killed = tmp_path / "real_nvp" / "killed"
    assert not (killed / "metrics.json").exists()
    first = state_of(killed)["step"]
    # a killed run may have logged past its checkpoint: the resumed run cuts those rows
    R.append_jsonl(killed / "log.jsonl", {"step": 10**6, "stale": True})
    R.main(["--resume", str(killed / "checkpoint.pt"), "--threads", "1"])
    whole, resumed = state_of(tmp_path / "real_nvp" / "whole"), state_of(killed)
    assert 0 < first < resumed["step"] == whole["step"]
    assert_same_weights(whole, resumed)
    assert without_times(tmp_path / "real_nvp" / "whole") == without_times(killed)
    m_whole, m_resumed = (json.loads((d / "metrics.json").read_text()) for d in (
        tmp_path / "real_nvp" / "whole", killed))  # fmt: skip
    assert m_whole["test_bpd"] == m_resumed["test_bpd"]


def test_resume_keeps_the_checkpoints_configuration_and_generate_samples(tiny_mnist_root, tmp_path):
    R.main([*TINY, "--data-root", tiny_mnist_root, "--out", tmp_path, "--epochs", "1",
            "--run-name", "a", "--logit-alpha", "0.05"])  # fmt: skip
    run = tmp_path / "real_nvp" / "a"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 8 and 0 < metrics["test_bpd"] < 12
    assert metrics["reconstruction_max_abs_error"] < 1e-4
    with pytest.raises(R.UsageError, match="--lr cannot be changed"):
        R.main(["--resume", str(run / "checkpoint.pt"), "--lr", "0.1"])
    R.main(["--resume", str(run / "checkpoint.pt"), "--epochs", "2", "--threads", "1"])
    config = json.loads((run / "config.json").read_text())
    assert config["logit_alpha"] == 0.05 and config["epochs"] == 2 and config["channels"] == 4
    assert json.loads((run / "metrics.json").read_text())["steps"] == 16
    R.main(["--generate", "5", "--temperature", "0.7", "--checkpoint", str(run / "checkpoint.pt")])
    arr = np.load(run / "samples_n5_t0.7.npy")
    assert arr.shape == (5, 1, 28, 28) and arr.dtype == np.uint8


def test_every_figure_has_a_title_axis_labels_and_a_legend_for_several_series(
    tiny_mnist_root, tmp_path, monkeypatch
):
    figures = {}

    def capture(fig, path):
        figures[path.name] = fig

    monkeypatch.setattr(R, "save_figure", capture)
    R.main([*TINY, "--data-root", tiny_mnist_root, "--out", tmp_path, "--epochs", "1",
            "--run-name", "img"])  # fmt: skip
    R.main(["--dataset", "8gaussians", "--steps", "10", "--out", tmp_path, "--run-name", "toy"])
    expected = {"samples_t1.0.png", "samples_t0.7.png", "reconstructions.png", "manifold.png",
                "bpd_curve.png", "density.png", "grid_map.png",
                "nll_curve.png"}  # fmt: skip
    assert set(figures) == expected
    for name, fig in figures.items():
        axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        assert fig._suptitle is not None or all(ax.get_title() for ax in axes), name
        for ax in axes:
            assert ax.get_xlabel() and ax.get_ylabel(), name
            assert "_" not in ax.get_xlabel(), (name, ax.get_xlabel())  # words, not log keys
            if len(ax.get_lines()) > 1 and "curve" in name:
                assert ax.get_legend() is not None, name
    assert figures["bpd_curve.png"].axes[0].get_xlabel() == "training time (min)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_process_gloo_run_writes_one_folder_from_rank_0(tiny_mnist_root, tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    flags = [*TINY, "--data-root", str(tiny_mnist_root), "--out", str(tmp_path), "--epochs", "1",
             "--steps", "2", "--batch-size", "8"]  # fmt: skip
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        str(REPO_ROOT / "real_nvp.py"), *flags, "--run-name", "ddp",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "real_nvp").iterdir()) == ["ddp"]
    assert len(list(tmp_path.rglob("checkpoint.pt"))) == 1
    run = tmp_path / "real_nvp" / "ddp"
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 2
    assert math.isfinite(metrics["test_bpd"])
    # One process on the same global batches (rank r takes every other image of each batch)
    # logs the same training curve up to dequantisation and ActNorm-init noise.
    R.main([*flags, "--run-name", "one"])
    curves = {}
    for name in ("ddp", "one"):
        rows = map(
            json.loads, (tmp_path / "real_nvp" / name / "log.jsonl").read_text().splitlines()
        )
        curves[name] = [r["train_bpd"] for r in rows if "train_bpd" in r]
    assert len(curves["ddp"]) == len(curves["one"]) == 1
    assert abs(curves["ddp"][0] - curves["one"][0]) < 0.05, curves


@pytest.mark.realdata
def test_real_mnist_loads(real_mnist_root):
    train, test = R.load_image_data("mnist", real_mnist_root)
    assert train.shape == (60000, 1, 28, 28) and test.shape == (10000, 1, 28, 28)
    assert train.dtype == torch.uint8 and int(train.max()) == 255
