"""Tests for real_nvp.py: the exact maths of every flow layer (inverse and log-determinant
against brute force), masks and squeeze, bits/dim, the initialisation trap, toy training against
the generator's entropy, smoke runs of the script and a 2-process gloo torchrun run."""

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
from conftest import REPO_ROOT, run_script

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
    "realnvp_batch": lambda: (
        R.RealNVP((1, 8, 8), 2, 4, 1, "batch", double_channels=True),
        (1, 8, 8),
    ),
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
    """--st-dtype bfloat16 runs only s/t under autocast: one coupling's inverse recomputes the
    same s, t from the same masked input, so it is exact; a deep stack drifts by bf16 rounding of
    slightly different inputs, still far below one grey level."""
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
    assert R.st_uses_bf16(R.parse_args(["--device", "cpu", "--st-dtype", "bfloat16"]))
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


def test_nan_detection_names_the_step():
    with pytest.raises(SystemExit, match="step 17"):
        R.check_finite(torch.tensor(float("nan")), 17)
    R.check_finite(torch.tensor(1.0), 3)


@pytest.mark.parametrize(
    "argv",
    [
        ["--logit-alpha", "0.5"],
        ["--generate", "4"],
        ["--generate", "4", "--checkpoint", "c.pt", "--samples-out", "s.txt"],
        ["--samples-out", "s.npy"],
        ["--num-scales", "3"],
        ["--batch-size", "0"],
        ["--dataset", "moons", "--temperature", "0"],
    ],
)
def test_impossible_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        R.parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_logit_alpha_defaults_per_dataset_and_an_explicit_value_wins():
    assert R.parse_args([]).logit_alpha == 1e-6
    assert R.parse_args(["--dataset", "cifar10"]).logit_alpha == 0.05
    assert R.parse_args(["--logit-alpha", "0.05"]).logit_alpha == 0.05


def test_cifar10_batches_load_from_the_torchvision_layout(tmp_path):
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
    assert R.parse_args(["--dataset", "cifar10"]).num_scales == 1  # the paper's CIFAR-10 setup


def test_missing_cifar_names_the_files(tmp_path):
    with pytest.raises(SystemExit, match=r"data_batch_1.*cifar-10-batches-py"):
        R.load_image_data("cifar10", tmp_path)


def test_script_smoke_resume_and_generate(tiny_mnist_root, tmp_path):
    common = [
        "--data-root",
        tiny_mnist_root,
        "--out",
        tmp_path,
        "--device",
        "cpu",
        "--num-threads",
        "1",
    ]
    small = [
        "--channels",
        "4",
        "--res-blocks",
        "1",
        "--bn-recompute-batches",
        "2",
        "--log-every",
        "1",
        "--st-dtype",
        "float32",  # exact reconstruction check below; bf16 is covered by its own test
    ]
    run_script(
        "real_nvp.py", *common, *small, "--epochs", "1", "--steps", "3", "--run-name", "a",
        "--logit-alpha", "0.05",
    )  # fmt: skip
    run = tmp_path / "real_nvp" / "a"
    for name in (
        "config.json",
        "metrics.json",
        "log.jsonl",
        "checkpoint.pt",
        "samples_t1.0.png",
        "samples_t0.7.png",
        "reconstructions.png",
        "manifold.png",
    ):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3 and 0 < metrics["test_bpd"] < 12
    assert metrics["reconstruction_max_abs_error"] < 1e-4
    assert json.loads((run / "config.json").read_text())["channels"] == 4
    # resume continues the step count from the checkpoint
    run_script(
        "real_nvp.py",
        *common,
        *small,
        "--epochs",
        "2",
        "--steps",
        "5",
        "--run-name",
        "b",
        "--resume",
        run / "checkpoint.pt",
    )
    assert json.loads((tmp_path / "real_nvp" / "b" / "metrics.json").read_text())["steps"] == 5
    # ... and keeps the checkpoint's logit alpha, not today's MNIST default (1e-6)
    assert (
        json.loads((tmp_path / "real_nvp" / "b" / "config.json").read_text())["logit_alpha"] == 0.05
    )
    out = tmp_path / "s.npy"
    proc = run_script(
        "real_nvp.py",
        "--generate",
        "5",
        "--checkpoint",
        run / "checkpoint.pt",
        "--samples-out",
        out,
        "--temperature",
        "0.7",
    )
    arr = np.load(out)
    assert arr.shape == (5, 1, 28, 28) and arr.dtype == np.uint8, proc.stdout


def test_toy_script_writes_nll_and_entropy(tmp_path):
    run_script(
        "real_nvp.py",
        "--dataset",
        "8gaussians",
        "--steps",
        "40",
        "--toy-hidden",
        "16",
        "--toy-test-size",
        "500",
        "--out",
        tmp_path,
        "--run-name",
        "t",
        "--num-threads",
        "1",
    )
    run = tmp_path / "real_nvp" / "t"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_nll"] > metrics["entropy"] - 4 * (
        metrics["test_nll_se"] + metrics["entropy_se"]
    )
    assert abs(metrics["entropy"] - 2.84) < 0.03
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["test_nll"] < log[0]["test_nll"]
    for name in ("density.png", "samples.png", "grid_map.png", "checkpoint.pt"):
        assert (run / name).is_file(), name


def test_missing_mnist_exits_1_with_file_names(tmp_path):
    proc = run_script(
        "real_nvp.py", "--data-root", tmp_path, "--out", tmp_path, check=False, timeout=120
    )
    assert proc.returncode == 1
    assert (
        "train-images-idx3-ubyte" in proc.stderr and str(tmp_path / "MNIST" / "raw") in proc.stderr
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_process_gloo_smoke(tiny_mnist_root, tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    flags = [
        "--data-root", str(tiny_mnist_root), "--out", str(tmp_path), "--device", "cpu",
        "--epochs", "1", "--steps", "2", "--batch-size", "8", "--channels", "4",
        "--res-blocks", "1", "--bn-recompute-batches", "1", "--log-every", "1",
    ]  # fmt: skip
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        str(REPO_ROOT / "real_nvp.py"), *flags, "--run-name", "ddp",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(list(tmp_path.rglob("checkpoint.pt"))) == 1  # rank 0 only
    run = tmp_path / "real_nvp" / "ddp"
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 2
    assert math.isfinite(metrics["test_bpd"])
    # One process on the same global batches (rank r gets every other index of the same
    # permutation) logs the same training curve up to dequantisation and ActNorm-init noise.
    run_script("real_nvp.py", *flags, "--run-name", "one", "--num-threads", "1")
    curves = {}
    for name in ("ddp", "one"):
        rows = (tmp_path / "real_nvp" / name / "log.jsonl").read_text().splitlines()
        curves[name] = [r["train_bpd"] for r in map(json.loads, rows) if "train_bpd" in r]
    assert len(curves["ddp"]) == len(curves["one"]) == 2
    for a, b in zip(curves["ddp"], curves["one"]):
        assert abs(a - b) < 0.05, curves


@pytest.mark.realdata
def test_real_mnist_loads(real_mnist_root):
    train, test = R.load_image_data("mnist", real_mnist_root)
    assert train.shape == (60000, 1, 28, 28) and test.shape == (10000, 1, 28, 28)
    assert train.dtype == torch.uint8 and int(train.max()) == 255
