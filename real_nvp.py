"""Real NVP normalizing flow: exact log-likelihood (bits/dim) on MNIST / CIFAR-10 and 2-D toys.

Paper: L. Dinh, J. Sohl-Dickstein, S. Bengio, "Density estimation using Real NVP", ICLR 2017
(arXiv:1605.08803). Equation numbers in the comments refer to that paper.

What it trains
- Images (`--dataset mnist`, default; `--dataset cifar10` when its files are in `--data-root`):
  the multi-scale Real NVP of Sec. 3.6 (per scale: 3 checkerboard affine couplings, squeeze,
  3 channel-wise couplings, factor out half of the dimensions; last scale: 4 checkerboard
  couplings) on dequantised, logit-transformed pixels. Reports exact train/test bits/dim every
  epoch, writes samples at temperature 1.0 and 0.7, reconstructions x -> z -> x and the latent
  manifold of eq. 19.
- 2-D toys (`--dataset moons|8gaussians|checkerboard|pinwheel`): Real NVP with MLP couplings,
  trained on fresh samples of the generator. Writes the density heat map, samples, the learned
  map of a grid (the paper's Figure 1) and the test NLL in nats next to the generator's entropy.
- Multi-GPU: the same file runs under `torchrun --nproc_per_node N real_nvp.py ...` with
  DistributedDataParallel (NCCL on GPUs, gloo on CPU). `--batch-size` is the global batch,
  split evenly over the processes, so N processes follow the one-process run up to
  batch-composition noise. Rank 0 logs, plots and checkpoints.

Commands
  full (MNIST, the default run: 10 epochs with a cosine LR, 0.67M parameters; under 2 h on a
  2-core CPU with AVX512-BF16, where the s/t nets run in bfloat16 at about 0.6 s per batch of
  64; about twice that in float32):
      python real_nvp.py
  quick (under a minute):
      python real_nvp.py --epochs 1 --steps 20 --channels 8 --res-blocks 1 --test-limit 500
  toys (4000 steps, about 3-4 CPU minutes each):
      python real_nvp.py --dataset moons
      python real_nvp.py --dataset 8gaussians --steps 300   # quick
  multi-GPU / multi-process:
      torchrun --nproc_per_node 4 real_nvp.py --batch-size 256
  sample from a checkpoint:
      python real_nvp.py --generate 64 --checkpoint outputs/real_nvp/RUN/checkpoint.pt \
          --samples-out samples.npy --temperature 0.7

Writes outputs/real_nvp/<run-name>/: config.json, metrics.json, log.jsonl, checkpoint.pt and
PNGs (images: samples_t1.0.png, samples_t0.7.png, reconstructions.png, manifold.png,
bpd_curve.png; toys: density.png, samples.png, grid_map.png, nll_curve.png).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm
from tqdm import tqdm

IMAGE_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
TOY_DATASETS = ("moons", "8gaussians", "checkerboard", "pinwheel")
LOG2 = math.log(2.0)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=[*IMAGE_SHAPES, *TOY_DATASETS])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", default="outputs")
    p.add_argument("--run-name", default=time.strftime("%Y%m%d-%H%M%S"))
    p.add_argument("--resume", default=None, metavar="PATH", help="checkpoint.pt to continue")
    # size knobs
    p.add_argument(
        "--epochs",
        type=int,
        default=10,
        help="image datasets: passes over the data (10 x 937 steps: under 2 h on a 2-core CPU "
        "with AVX512-BF16)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="stop after this many optimizer steps in total (toys: default 4000; images: no cap)",
    )
    p.add_argument(
        "--time-limit-min",
        type=float,
        default=0.0,
        help="stop training after this many minutes of wall time, then evaluate (0 = none)",
    )
    # optimisation
    p.add_argument(
        "--batch-size", type=int, default=None, help="global batch (images 64, toys 512)"
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=100.0, help="gradient-norm clip (0 = off)")
    p.add_argument(
        "--l2-scale", type=float, default=5e-5, help="L2 on weight-norm and coupling scales"
    )
    # model
    p.add_argument(
        "--channels", type=int, default=32, help="feature maps of s/t nets at scale 1 (x2/scale)"
    )
    p.add_argument("--res-blocks", type=int, default=2, help="residual blocks per s/t ResNet")
    p.add_argument("--num-scales", type=int, default=None, help="squeezes (mnist 2, cifar10 1)")
    p.add_argument(
        "--double-channels",
        action="store_true",
        help="double the s/t feature maps at every scale as in the paper (about 2.3x the CPU cost "
        "on MNIST); default: the same width at every scale",
    )
    p.add_argument("--norm", default="act", choices=["act", "batch", "none"])
    p.add_argument(
        "--st-dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="precision of the s/t networks of image models (the flow maths stays float32); "
        "auto: bfloat16 where the hardware computes it natively (CUDA with bf16, CPUs with "
        "AVX512-BF16/AMX), else float32. Toys always use float32",
    )
    p.add_argument(
        "--lr-schedule",
        default="cosine",
        choices=["cosine", "constant"],
        help="image datasets: cosine decay of the LR to 0 over the planned steps, or constant",
    )
    p.add_argument("--scale-init", type=float, default=1.0, help="initial value of s = scale*tanh")
    p.add_argument(
        "--logit-alpha",
        type=float,
        default=None,
        help="a in logit(a + (1-2a) x); default 1e-6 on MNIST (as the later MNIST flow papers; "
        "0.05 trained far slower there) and 0.05 on CIFAR-10 (the paper's code)",
    )
    p.add_argument("--toy-couplings", type=int, default=8)
    p.add_argument("--toy-hidden", type=int, default=256)
    p.add_argument("--toy-test-size", type=int, default=20000)
    # evaluation / logging
    p.add_argument("--eval-every", type=int, default=0, help="extra test evals every N steps")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--eval-batch-size", type=int, default=500)
    p.add_argument(
        "--test-limit", type=int, default=0, help="score only the first N test images (0 = all)"
    )
    p.add_argument(
        "--bn-recompute-batches",
        type=int,
        default=50,
        help="training batches used to recompute BatchNorm statistics before each evaluation",
    )
    p.add_argument(
        "--num-threads",
        type=int,
        default=1,
        help="torch CPU threads (0 = torch's default, one per core). 1 is the default because on "
        "the shared 2-core box 2 threads trained 10x slower (OpenMP threads fighting other jobs)",
    )
    # generation from a checkpoint
    p.add_argument("--generate", type=int, default=0, metavar="N", help="only sample N items")
    p.add_argument("--checkpoint", default=None, help="checkpoint for --generate")
    p.add_argument("--samples-out", default=None, help=".npy file for --generate")
    p.add_argument("--temperature", type=float, default=1.0, help="prior std for --generate")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    is_toy = args.dataset in TOY_DATASETS
    if args.batch_size is None:
        args.batch_size = 512 if is_toy else 64
    if args.steps is None:
        args.steps = 4000 if is_toy else 0
    if args.num_scales is None:
        # MNIST: 28 -> 14 -> 7 (two squeezes); CIFAR-10: the paper squeezes only once (Sec. 4.1).
        args.num_scales = {"mnist": 2, "cifar10": 1}.get(args.dataset, 0)
    if args.logit_alpha is None:
        args.logit_alpha = 1e-6 if args.dataset == "mnist" else 0.05
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.generate:
        if args.generate < 0:
            parser.error("--generate N needs N >= 1")
        if not args.checkpoint or not args.samples_out:
            parser.error("--generate needs --checkpoint PATH and --samples-out FILE.npy")
        if not args.samples_out.endswith(".npy"):
            parser.error("--samples-out must end in .npy")
        if args.resume:
            parser.error("--generate and --resume cannot be combined")
        if world > 1:
            parser.error("--generate runs in one process, not under torchrun")
    elif args.checkpoint or args.samples_out:
        parser.error("--checkpoint/--samples-out are only used with --generate N")
    if not 0.0 < args.logit_alpha < 0.5:
        parser.error("--logit-alpha must be in (0, 0.5)")
    if args.temperature <= 0:
        parser.error("--temperature must be > 0")
    for name in (
        "epochs",
        "steps",
        "log_every",
        "eval_every",
        "bn_recompute_batches",
        "test_limit",
    ):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    for name in ("batch_size", "channels", "res_blocks", "toy_couplings", "toy_hidden"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.lr <= 0 or args.clip < 0 or args.l2_scale < 0 or args.time_limit_min < 0:
        parser.error("--lr must be > 0; --clip, --l2-scale and --time-limit-min >= 0")
    if args.toy_test_size < 100 or args.eval_batch_size < 1:
        parser.error("--toy-test-size must be >= 100 and --eval-batch-size >= 1")
    if args.batch_size % world:
        parser.error(f"--batch-size {args.batch_size} must divide evenly over {world} processes")
    if args.batch_size // world < 2 and args.norm == "batch":
        parser.error("--norm batch needs at least 2 samples per process")
    if not is_toy:
        _, h, w = IMAGE_SHAPES[args.dataset]
        if args.num_scales < 0 or h % (2**args.num_scales) or w % (2**args.num_scales):
            parser.error(
                f"--num-scales {args.num_scales}: {h}x{w} images cannot be squeezed that often"
            )
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    return args


# --------------------------------------------------------------------------------------------
# Boilerplate: device, seeding, atomic save, distributed setup
# --------------------------------------------------------------------------------------------
def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    if (
        name == "auto"
        and getattr(torch.backends, "mps", None)
        and torch.backends.mps.is_available()
    ):
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Dist:
    """What the training loop needs to know about torchrun: rank, world size, all-reduce."""

    def __init__(self, device_name: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.device = pick_device(device_name, self.local_rank)
        if self.enabled:
            # NCCL is the GPU backend; gloo runs the same code on CPUs (used by the tests).
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend=backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Sum Python floats over processes (float64 so bits/dim sums keep their digits)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# Data: images (uint8 tensors held whole) and 2-D toy generators
# --------------------------------------------------------------------------------------------
def load_image_data(name: str, root: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (train, test) uint8 tensors of shape (N, C, H, W)."""
    import torchvision

    root = Path(root)
    if name == "mnist":
        files = [
            f"{s}-{k}-ubyte" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")
        ]
        folder = root / "MNIST" / "raw"

        def get(train: bool, download: bool):
            return torchvision.datasets.MNIST(str(root), train=train, download=download).data

    else:
        files = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]
        folder = root / "cifar-10-batches-py"

        def get(train: bool, download: bool):
            if download:  # fetches and unpacks the archive into the torchvision layout
                torchvision.datasets.CIFAR10(str(root), train=train, download=True)
            # Read the python-pickle batches directly (torchvision would also insist on the
            # archive's md5 sums): each holds b"data", uint8 rows of 3072 = 3 x 32 x 32 (CHW).
            arrays = []
            for batch in files[:5] if train else files[5:6]:
                with open(folder / batch, "rb") as f:
                    arrays.append(np.asarray(pickle.load(f, encoding="bytes")[b"data"], np.uint8))
            return torch.from_numpy(np.concatenate(arrays).reshape(-1, 3, 32, 32))

    try:
        train, test = get(True, False), get(False, False)
    except (RuntimeError, FileNotFoundError):
        try:  # the official download (torchvision) when the files are not there yet
            train, test = get(True, True), get(False, True)
        except Exception as exc:  # no internet, mirror down, ...
            raise SystemExit(
                f"error: {name} not found and could not be downloaded ({type(exc).__name__}). "
                f"Put {', '.join(files)} in {folder}/"
            ) from None
    except Exception as exc:  # corrupt or truncated files
        raise SystemExit(f"error: could not read {name} from {folder}/: {exc}") from None
    if train.dim() == 3:
        train, test = train.unsqueeze(1), test.unsqueeze(1)
    expected = IMAGE_SHAPES[name]
    if tuple(train.shape[1:]) != expected or train.dtype != torch.uint8:
        raise SystemExit(f"error: {folder}/ holds images of shape {tuple(train.shape[1:])}")
    return train, test


def sample_toy(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw n points from the 2-D toy generators used across the flow literature."""
    g = generator
    if name == "moons":
        # sklearn-style make_moons(noise=0.1): outer arc (cos t, sin t), inner arc
        # (1 - cos t, 0.5 - sin t), t ~ U(0, pi); then scaled by 2 and shifted by (-1, -0.2).
        t = torch.rand(n, generator=g) * math.pi
        inner = torch.rand(n, generator=g) < 0.5
        x = torch.where(inner, 1 - torch.cos(t), torch.cos(t))
        y = torch.where(inner, 0.5 - torch.sin(t), torch.sin(t))
        pts = torch.stack([x, y], 1) + 0.1 * torch.randn(n, 2, generator=g)
        return pts * 2 + torch.tensor([-1.0, -0.2])
    if name == "8gaussians":
        # FFJORD/BNAF's toy: unit-circle centres scaled by 4 (well separated, entropy ~2.84
        # nats; with a scale of 2 neighbouring components overlap and the entropy is ~2.52).
        k = torch.randint(0, 8, (n,), generator=g).float() * (math.pi / 4)
        centres = 4.0 * torch.stack([torch.cos(k), torch.sin(k)], 1)
        return (centres + 0.5 * torch.randn(n, 2, generator=g)) / 1.414
    if name == "checkerboard":
        x1 = torch.rand(n, generator=g) * 4 - 2
        x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g).float() * 2
        x2 = x2 + torch.floor(x1) % 2
        return torch.stack([x1, x2], 1) * 2
    if name == "pinwheel":
        radial_std, tangential_std, arms, rate = 0.3, 0.1, 5, 0.25
        arm = torch.randint(0, arms, (n,), generator=g)
        feats = torch.randn(n, 2, generator=g) * torch.tensor([radial_std, tangential_std])
        feats[:, 0] += 1.0
        angle = arm.float() * (2 * math.pi / arms) + rate * torch.exp(feats[:, 0])
        c, s = torch.cos(angle), torch.sin(angle)
        rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
        return 2 * torch.einsum("nij,nj->ni", rot, feats)
    raise ValueError(f"unknown toy dataset {name}")


def toy_log_density(name: str, x: torch.Tensor) -> torch.Tensor | None:
    """Exact log-density of the toy generator (float64), or None where it has no closed form."""
    x = x.double()
    if name == "8gaussians":
        k = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
        centres = 4.0 * torch.stack([torch.cos(k), torch.sin(k)], 1)
        y = x * 1.414  # undo the division: density picks up |det| = 1.414^2
        d2 = ((y[:, None, :] - centres[None]) ** 2).sum(-1)
        log_comp = -d2 / (2 * 0.25) - math.log(2 * math.pi * 0.25)
        return torch.logsumexp(log_comp, 1) - math.log(8) + 2 * math.log(1.414)
    if name == "moons":
        # Mixture over the arc parameter t ~ U(0, pi), integrated by the midpoint rule: 512
        # nodes per arc put them 0.012 apart along the (radius 2) arc, against a noise std of 0.2,
        # so the rule's relative error is ~1e-4.
        m = 512
        t = (torch.arange(m, dtype=torch.float64) + 0.5) * (math.pi / m)
        outer = torch.stack([torch.cos(t), torch.sin(t)], 1)
        inner = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], 1)
        means = torch.cat([outer, inner]) * 2 + torch.tensor([-1.0, -0.2], dtype=torch.float64)
        var = 0.2**2
        out = []
        for chunk in x.split(2048):
            d2 = ((chunk[:, None, :] - means[None]) ** 2).sum(-1)
            log_comp = -d2 / (2 * var) - math.log(2 * math.pi * var)
            out.append(torch.logsumexp(log_comp, 1) - math.log(2 * m))
        return torch.cat(out)
    if name == "checkerboard":
        x1, x2 = x[:, 0] / 2, x[:, 1] / 2
        inside = (x1 >= -2) & (x1 < 2) & (x2 >= -2) & (x2 < 2)
        inside &= ((torch.floor(x1) + torch.floor(x2)) % 2) == 0
        return torch.where(inside, -math.log(32.0), -math.inf)
    return None


def toy_entropy(name: str, n: int = 50_000, seed: int = 12345) -> tuple[float, float] | None:
    """Monte Carlo entropy H = E[-log p(x)] of the generator and its standard error."""
    if name == "checkerboard":  # uniform on 8 squares of side 2: exact
        return math.log(32.0), 0.0
    g = torch.Generator().manual_seed(seed)
    logp = toy_log_density(name, sample_toy(name, n, g))
    if logp is None:
        return None
    return float(-logp.mean()), float(logp.std() / math.sqrt(n))


# --------------------------------------------------------------------------------------------
# Preprocessing (paper Sec. 4.1): dequantisation and logit transform, with their log-det
# --------------------------------------------------------------------------------------------
def dequantize(x_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x~ = (x + u) / 256, u ~ U[0, 1): a continuous density on [0, 1)^D whose integral over each
    pixel bin lower-bounds the discrete probability, so bits/dim below are an upper bound."""
    u = torch.rand(x_uint8.shape, generator=generator, device=x_uint8.device)
    return (x_uint8.float() + u) / 256.0


def logit_transform(x_tilde: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """y = logit(a + (1 - 2a) x~); returns y and log|dy/dx~| summed per sample."""
    p = alpha + (1 - 2 * alpha) * x_tilde
    y = torch.log(p) - torch.log1p(-p)
    # dy/dx~ = (1 - 2a) / (p (1 - p)): diagonal Jacobian, so its log-det is a per-pixel sum.
    logdet = (math.log(1 - 2 * alpha) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
    return y, logdet


def inverse_logit(y: torch.Tensor, alpha: float) -> torch.Tensor:
    return (torch.sigmoid(y) - alpha) / (1 - 2 * alpha)


def bits_per_dim(log_p_xtilde: torch.Tensor, num_dims: int) -> torch.Tensor:
    """bpd = [-log p(x~) + D log 256] / (D ln 2), where log p(x~) = log N(z) + log|det J_flow|
    + log|det J_preprocess| (eq. 3). The D log 256 converts the density on [0,1)^D back to the
    0..255 pixel scale, so a model uniform on [0,1)^D scores exactly 8 bits/dim."""
    return (-log_p_xtilde + num_dims * math.log(256.0)) / (num_dims * LOG2)


def standard_normal_logprob(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z.pow(2) + math.log(2 * math.pi)).flatten(1).sum(1)


# --------------------------------------------------------------------------------------------
# Flow layers. Each maps forward (data -> latent) returning (y, log|det dy/dx|) per sample, and
# has an exact inverse.
# --------------------------------------------------------------------------------------------
def checkerboard_mask(c: int, h: int, w: int, parity: int) -> torch.Tensor:
    """Sec. 3.4: 1 where (i + j) is odd (parity 0) / even (parity 1), same for every channel."""
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    mask = ((i + j) % 2 == (1 - parity)).float()
    return mask.expand(1, c, h, w).clone()


def channel_mask(c: int, h: int, w: int, parity: int) -> torch.Tensor:
    """Sec. 3.4: 1 on the first half of the channels (parity 0) or on the second half (1)."""
    mask = torch.zeros(1, c, h, w)
    half = slice(0, c // 2) if parity == 0 else slice(c // 2, c)
    mask[:, half] = 1.0
    return mask


class AffineCoupling(nn.Module):
    """Affine coupling in the binary-mask form, eq. 9:
    y = b * x + (1 - b) * (x * exp(s(b * x)) + t(b * x)),
    s = scale * tanh(raw): bounded log-scales keep exp(s) from exploding early in training."""

    def __init__(self, mask: torch.Tensor, net: nn.Module, scale_init: float = 1.0):
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = net  # maps [b * x, b] (2C channels / features) -> [raw_s, t] (2C)
        # Per-channel learned scale. It must NOT start at 0 together with the zero-initialised last
        # layer of `net`: then d s/d raw = scale = 0 and d s/d scale = tanh(0) = 0, both stay zero
        # forever, and the flow trains as a volume-preserving (additive, NICE-like) one.
        shape = (1, mask.shape[1]) + (1,) * (mask.dim() - 2)
        self.scale = nn.Parameter(torch.full(shape, float(scale_init)))
        # --st-bf16: run only the s/t network under bfloat16 autocast (about 2x faster convs on
        # CPUs with AVX512-BF16 / on GPUs). The coupling arithmetic, log-det and prior stay in
        # float32, and the inverse recomputes the same s, t from the same masked input, so the
        # flow is still exactly invertible with an exact log-det; only the function class moves.
        self.st_bf16 = False

    def _s_t(self, x_masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.mask.expand_as(x_masked)
        with torch.autocast(x_masked.device.type, torch.bfloat16, enabled=self.st_bf16):
            out = self.net(torch.cat([x_masked, b], 1))
        raw_s, t = out.float().chunk(2, 1)
        keep = 1 - self.mask  # s and t only act on the dimensions that are transformed
        return self.scale * torch.tanh(raw_s) * keep, t * keep

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_masked = x * self.mask
        s, t = self._s_t(x_masked)
        y = x_masked + (1 - self.mask) * (x * torch.exp(s) + t)  # eq. 9
        # Triangular Jacobian (eq. 6): the determinant is exp(sum of s over transformed dims).
        return y, s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y_masked = y * self.mask  # identical to x_masked (eq. 7): s and t can be recomputed
        s, t = self._s_t(y_masked)
        return y_masked + (1 - self.mask) * ((y - t) * torch.exp(-s))  # eq. 8


class Squeeze(nn.Module):
    """Sec. 3.6: s x s x c -> s/2 x s/2 x 4c, each 2x2 block of a channel becomes 4 channels
    (channel c*4 + 2*dy + dx). A permutation: log-det 0."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.pixel_unshuffle(x, 2), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(y, 2)


def _channel_dims(x: torch.Tensor) -> list[int]:
    return [0, *range(2, x.dim())]  # statistics per channel: over batch and positions


class FlowBatchNorm(nn.Module):
    """Batch normalisation as a flow layer (eq. 17-18): x -> (x - mu) / sqrt(var + eps), then a
    learned per-channel affine map. log-det = sum over dims of log_gamma - 0.5 log(var + eps).
    Training uses the batch statistics (and back-propagates through them, as in the paper);
    evaluation and inversion use the running statistics, which `recompute_batchnorm_stats`
    re-estimates over the training data before each evaluation."""

    def __init__(self, num_channels: int, ndim: int, momentum: float | None = 0.05, eps=1e-4):
        super().__init__()
        shape = (1, num_channels) + (1,) * (ndim - 2)
        self.log_gamma = nn.Parameter(torch.zeros(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.register_buffer("running_mean", torch.zeros(shape))
        self.register_buffer("running_var", torch.ones(shape))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        self.momentum, self.eps = momentum, eps

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            mean = x.mean(_channel_dims(x), keepdim=True)
            var = x.var(_channel_dims(x), unbiased=False, keepdim=True)
            with torch.no_grad():
                self.num_batches_tracked += 1
                # momentum None = cumulative average (used when recomputing the statistics)
                m = self.momentum or 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, m)
                self.running_var.lerp_(var, m)
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean) * torch.rsqrt(var + self.eps) * torch.exp(self.log_gamma) + self.beta
        per_position = (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum()  # eq. 18
        return y, per_position.expand(x.shape[0]) * x[0, 0].numel()

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        x_hat = (y - self.beta) * torch.exp(-self.log_gamma)
        return x_hat * torch.sqrt(self.running_var + self.eps) + self.running_mean


class ActNorm(nn.Module):
    """Per-channel affine y = (x + bias) * exp(log_scale) (Glow, Kingma & Dhariwal 2018), its
    parameters initialised from the first training batch so outputs start at zero mean and unit
    variance. Unlike batch norm it has no running statistics: train and eval compute the same
    bijection, which is why it is the default here."""

    def __init__(self, num_channels: int, ndim: int):
        super().__init__()
        shape = (1, num_channels) + (1,) * (ndim - 2)
        self.bias = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))
        # float, not bool: DDP broadcasts buffers and gloo has no bool all-reduce/broadcast
        self.register_buffer("initialized", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                mean = x.mean(_channel_dims(x), keepdim=True)
                std = x.std(_channel_dims(x), keepdim=True)
                self.bias.copy_(-mean)
                self.log_scale.copy_(-torch.log(std + 1e-6))
                self.initialized.fill_(1.0)
        y = (x + self.bias) * torch.exp(self.log_scale)
        return y, self.log_scale.sum().expand(x.shape[0]) * x[0, 0].numel()

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


def make_norm(kind: str, num_channels: int, ndim: int) -> nn.Module | None:
    if kind == "batch":
        return FlowBatchNorm(num_channels, ndim)
    if kind == "act":
        return ActNorm(num_channels, ndim)
    return None


class FlowSequence(nn.Module):
    """Composition of bijections: log-dets add (eq. 10-11), inverses apply in reverse (eq. 12)."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y


# --------------------------------------------------------------------------------------------
# s/t networks
# --------------------------------------------------------------------------------------------
def wn_conv(c_in: int, c_out: int, k: int) -> nn.Module:
    return weight_norm(nn.Conv2d(c_in, c_out, k, padding=k // 2))


def zero_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """Last layer of every s/t net: zero weights and bias, so s = t = 0 and each coupling starts
    as the identity (no weight norm here: its g/||v|| is undefined for v = 0)."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            wn_conv(channels, channels, 3),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            wn_conv(channels, channels, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNetST(nn.Module):
    """s and t of a convolutional coupling: a weight-normalised ResNet with batch norm inside
    (Sec. 3.6 / 4.1); outputs raw_s and t for every input channel."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, blocks: int):
        super().__init__()
        self.inp = wn_conv(c_in, c_mid, 3)
        self.blocks = nn.Sequential(*(ResidualBlock(c_mid) for _ in range(blocks)))
        self.head = nn.Sequential(nn.BatchNorm2d(c_mid), nn.ReLU(), zero_conv(c_mid, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.inp(x)))


class MLPST(nn.Module):
    """s and t of a coupling on 2-D points: a ReLU MLP with a zero-initialised last layer."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        last = nn.Linear(hidden, d_out)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), last
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
def coupling_and_norm(mask, net, norm: str, scale_init: float) -> list[nn.Module]:
    layers: list[nn.Module] = [AffineCoupling(mask, net, scale_init)]
    n = make_norm(norm, mask.shape[1], mask.dim())
    return layers + ([n] if n is not None else [])


class RealNVP(nn.Module):
    """Multi-scale Real NVP (Sec. 3.6). forward(x) -> (z, log|det|) with z the concatenation of
    the variables factored out at every scale (eq. 13-16); inverse(z) -> x."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_scales: int = 2,
        channels: int = 32,
        res_blocks: int = 2,
        norm: str = "act",
        scale_init: float = 1.0,
        double_channels: bool = False,
    ):
        super().__init__()
        c, h, w = in_shape
        growth = 2 if double_channels else 1
        self.in_shape = tuple(in_shape)
        self.levels = nn.ModuleList()
        self.z_shapes: list[tuple[int, int, int]] = []

        def coupling(mask: torch.Tensor, mid: int) -> list[nn.Module]:
            k = mask.shape[1]
            return coupling_and_norm(
                mask, ResNetST(2 * k, mid, 2 * k, res_blocks), norm, scale_init
            )

        for scale in range(num_scales):
            # Sec. 3.6 doubles the feature maps as the resolution halves; optional here because
            # at constant width the coarse scales cost 4x less on a CPU.
            mid = channels * growth**scale
            layers: list[nn.Module] = []
            for parity in (0, 1, 0):  # alternate so every unit gets transformed (Sec. 3.5)
                layers += coupling(checkerboard_mask(c, h, w, parity), mid)
            layers.append(Squeeze())
            c, h, w = 4 * c, h // 2, w // 2
            for parity in (0, 1, 0):
                layers += coupling(channel_mask(c, h, w, parity), mid)
            self.levels.append(FlowSequence(layers))
            self.z_shapes.append((c // 2, h, w))  # half the dimensions are factored out (eq. 14)
            c //= 2
        mid = channels * growth**num_scales
        last: list[nn.Module] = []
        for parity in (0, 1, 0, 1):  # the final scale: 4 checkerboard couplings (eq. 15)
            last += coupling(checkerboard_mask(c, h, w, parity), mid)
        self.final = FlowSequence(last)
        self.z_shapes.append((c, h, w))

    @property
    def num_dims(self) -> int:
        return math.prod(self.in_shape)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        zs = []
        h = x
        for level in self.levels:
            h, ld = level(h)
            logdet = logdet + ld
            z, h = h.chunk(2, 1)  # eq. 14: (z^(i+1), h^(i+1)) = f^(i+1)(h^(i))
            zs.append(z.flatten(1))
        h, ld = self.final(h)  # eq. 15
        zs.append(h.flatten(1))
        return torch.cat(zs, 1), logdet + ld  # eq. 16: z = (z^(1), ..., z^(L))

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        sizes = [math.prod(s) for s in self.z_shapes]
        parts = [p.reshape(-1, *s) for p, s in zip(z.split(sizes, 1), self.z_shapes)]
        h = self.final.inverse(parts[-1])
        for level, z_i in zip(reversed(self.levels), reversed(parts[:-1])):
            h = level.inverse(torch.cat([z_i, h], 1))
        return h


class ToyRealNVP(nn.Module):
    """Real NVP on R^2 with MLP couplings whose masks alternate between the two coordinates."""

    def __init__(
        self, couplings: int = 8, hidden: int = 256, norm: str = "act", scale_init: float = 1.0
    ):
        super().__init__()
        layers: list[nn.Module] = []
        for k in range(couplings):
            mask = torch.tensor([[1.0, 0.0]] if k % 2 == 0 else [[0.0, 1.0]])
            layers += coupling_and_norm(mask, MLPST(4, hidden, 4), norm, scale_init)
        self.flow = FlowSequence(layers)
        self.in_shape = (2,)

    @property
    def num_dims(self) -> int:
        return 2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.flow(x)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return self.flow.inverse(z)


def build_model(args: argparse.Namespace) -> nn.Module:
    if args.dataset in TOY_DATASETS:
        model = ToyRealNVP(args.toy_couplings, args.toy_hidden, args.norm, args.scale_init)
    else:
        model = RealNVP(
            IMAGE_SHAPES[args.dataset],
            args.num_scales,
            args.channels,
            args.res_blocks,
            args.norm,
            args.scale_init,
            getattr(args, "double_channels", False),
        )
    set_st_bf16(model, st_uses_bf16(args))
    return model


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def st_uses_bf16(args) -> bool:
    """Resolve --st-dtype. bf16 without native support is emulated and slower than float32."""
    choice = getattr(args, "st_dtype", "float32")
    if args.dataset in TOY_DATASETS or choice == "float32":
        return False
    if choice == "bfloat16":
        return True
    kind = pick_device(args.device).type
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    return kind == "cpu" and cpu_has_native_bf16()


def set_st_bf16(model: nn.Module, enabled: bool) -> None:
    for m in model.modules():
        if isinstance(m, AffineCoupling):
            m.st_bf16 = enabled


def log_prob(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Change of variables, eq. 3: log p_X(x) = log p_Z(f(x)) + log|det df/dx|."""
    z, logdet = model(x)
    return standard_normal_logprob(z) + logdet


def image_log_prob(model: nn.Module, x_tilde: torch.Tensor, alpha: float) -> torch.Tensor:
    """log p(x~) on [0,1)^D: flow log-likelihood of y = logit(...) plus the preprocessing log-det."""
    y, logdet_pre = logit_transform(x_tilde, alpha)
    return log_prob(model, y) + logdet_pre


def scale_l2(model: nn.Module) -> torch.Tensor:
    """L2 on the scale parameters (paper Sec. 4.1, 5e-5): the weight-norm magnitudes g and the
    couplings' tanh scales."""
    terms = [
        p.pow(2).sum()
        for name, p in model.named_parameters()
        if name.endswith("parametrizations.weight.original0") or name.endswith(".scale")
    ]
    return torch.stack(terms).sum() if terms else torch.zeros(())


@torch.no_grad()
def recompute_batchnorm_stats(model: nn.Module, batches) -> int:
    """Re-estimate every batch-norm running statistic (flow-level FlowBatchNorm and the BN inside
    the s/t nets) as a plain average over `batches` with the current weights, so evaluation does
    not use the stale exponential averages collected while the weights were moving."""
    bns = [
        m
        for m in model.modules()
        if isinstance(m, (FlowBatchNorm, nn.modules.batchnorm._BatchNorm))
    ]
    if not bns:
        return 0
    was_training = model.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    n = 0
    for x in batches:
        model(x)
        n += 1
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.train(was_training)
    return n


def check_finite(loss: torch.Tensor, step: int, dist_ctx: Dist | None = None) -> None:
    """Stop with a clear message at the first non-finite loss (all processes agree, so none is
    left waiting in an all-reduce)."""
    bad = 0.0 if torch.isfinite(loss).all() else 1.0
    if dist_ctx is not None:
        bad = dist_ctx.sum([bad])[0]
    if bad:
        raise SystemExit(
            f"error: non-finite loss ({float(loss):.4g}) at step {step}; "
            "try a lower --lr, a smaller --clip, or --norm act"
        )


# --------------------------------------------------------------------------------------------
# Evaluation, sampling and plots
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_images(model, data_u8, args, device, ctx: Dist, seed: int = 1234) -> float:
    """Mean test bits/dim with a fixed dequantisation noise; each process scores a shard."""
    model.eval()
    idx = torch.arange(ctx.rank, len(data_u8), ctx.world)
    g = torch.Generator(device=device).manual_seed(seed + ctx.rank)
    total, count = 0.0, 0
    for chunk in idx.split(args.eval_batch_size):
        x = dequantize(data_u8[chunk.to(data_u8.device)].to(device), g)
        bpd = bits_per_dim(image_log_prob(model, x, args.logit_alpha), model.num_dims)
        total += float(bpd.double().sum())
        count += len(chunk)
    total, count = ctx.sum([total, float(count)])
    model.train()
    return total / count


@torch.no_grad()
def sample_images(model, n: int, temperature: float, alpha: float, device) -> torch.Tensor:
    """z ~ N(0, T^2 I) -> x = g(z) -> pixel values in [0, 1] (uint8 levels / 255)."""
    model.eval()
    z = torch.randn(n, model.num_dims, device=device) * temperature
    x_tilde = inverse_logit(model.inverse(z), alpha)
    return (torch.floor(x_tilde.clamp(0, 1 - 1e-6) * 256) / 255).cpu()


def manifold_latents(zs: torch.Tensor, n: int = 10) -> torch.Tensor:
    """Eq. 19: z = cos(phi) (cos(phi') z1 + sin(phi') z2) + sin(phi) (cos(phi') z3 + sin(phi') z4)
    on an n x n grid of phi, phi' in [0, pi/2] (corners are exactly z1..z4)."""
    z1, z2, z3, z4 = zs
    angles = torch.linspace(0, math.pi / 2, n, device=zs.device)
    rows = []
    for phi in angles:
        for phi2 in angles:
            a = torch.cos(phi2) * z1 + torch.sin(phi2) * z2
            b = torch.cos(phi2) * z3 + torch.sin(phi2) * z4
            rows.append(torch.cos(phi) * a + torch.sin(phi) * b)
    return torch.stack(rows)


def save_grid(images: torch.Tensor, path: Path, nrow: int) -> None:
    from torchvision.utils import save_image

    save_image(images, str(path), nrow=nrow, padding=2, pad_value=1.0)


@torch.no_grad()
def image_figures(model, test_u8, args, device, run_dir: Path) -> dict:
    model.eval()
    torch.manual_seed(args.seed + 99)
    for t in (1.0, 0.7):
        save_grid(
            sample_images(model, 64, t, args.logit_alpha, device), run_dir / f"samples_t{t}.png", 8
        )
    # reconstructions x -> z -> x: top rows data, bottom rows g(f(x))
    x = dequantize(test_u8[:32].to(device))
    y, _ = logit_transform(x, args.logit_alpha)
    z, _ = model(y)
    x_rec = inverse_logit(model.inverse(z), args.logit_alpha)
    recon_err = float((x_rec - x).abs().max())
    save_grid(torch.cat([x, x_rec.clamp(0, 1)]).cpu(), run_dir / "reconstructions.png", 8)
    # latent manifold of four test images (eq. 19)
    y4, _ = logit_transform(dequantize(test_u8[:4].to(device)), args.logit_alpha)
    z4, _ = model(y4)
    x_man = inverse_logit(model.inverse(manifold_latents(z4)), args.logit_alpha)
    save_grid(x_man.clamp(0, 1).cpu(), run_dir / "manifold.png", 10)
    model.train()
    return {"reconstruction_max_abs_error": recon_err}


def plot_curve(log_rows: list[dict], key_x: str, keys: list[str], path: Path, ylabel: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
        pts = [(r[key_x], r[key]) for r in log_rows if key in r and r[key] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=key)
    ax.set_xlabel(key_x)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def toy_figures(model, args, device, run_dir: Path) -> None:
    """Density heat map, samples next to data, and the paper's Figure 1 (grid mapped both ways)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    lim = 4.0
    n = 300
    g1 = torch.linspace(-lim, lim, n)
    xx, yy = torch.meshgrid(g1, g1, indexing="xy")
    grid = torch.stack([xx.flatten(), yy.flatten()], 1).to(device)
    dens = torch.cat([log_prob(model, c).exp() for c in grid.split(10000)]).reshape(n, n).cpu()
    data = sample_toy(args.dataset, 5000, torch.Generator().manual_seed(7))
    true_logp = toy_log_density(args.dataset, grid.cpu())
    panels = 2 if true_logp is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 5), squeeze=False)
    axes[0, 0].imshow(dens, extent=(-lim, lim, -lim, lim), origin="lower", cmap="magma")
    axes[0, 0].set_title("Real NVP density")
    if true_logp is not None:
        axes[0, 1].imshow(
            true_logp.exp().reshape(n, n),
            extent=(-lim, lim, -lim, lim),
            origin="lower",
            cmap="magma",
        )
        axes[0, 1].set_title(f"true {args.dataset} density")
    fig.tight_layout()
    fig.savefig(run_dir / "density.png", dpi=100)
    plt.close(fig)

    samples = model.inverse(torch.randn(5000, 2, device=device)).cpu()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, pts, title in ((axes[0], data, "data"), (axes[1], samples, "model samples")):
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_title(title)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(run_dir / "samples.png", dpi=100)
    plt.close(fig)

    # Figure 1: x ~ data -> z = f(x) (inference) and z ~ N(0, I) -> x = g(z) (generation), with
    # the images of straight grid lines of each space drawn in the other.
    t = torch.linspace(-lim, lim, 200)
    lines = [torch.stack([torch.full_like(t, v), t], 1) for v in torch.linspace(-3, 3, 13)]
    lines += [torch.stack([t, torch.full_like(t, v)], 1) for v in torch.linspace(-3, 3, 13)]
    z_data = model(data.to(device))[0].cpu()
    z_prior = torch.randn(5000, 2)
    x_gen = model.inverse(z_prior.to(device)).cpu()
    fig, axes = plt.subplots(2, 2, figsize=(9, 9))
    specs = [
        (axes[0, 0], data, lines, "X: data x", None),
        (axes[0, 1], z_data, [model(ln.to(device))[0].cpu() for ln in lines], "Z: z = f(x)", None),
        (axes[1, 1], z_prior, lines, "Z: z ~ N(0, I)", None),
        (
            axes[1, 0],
            x_gen,
            [model.inverse(ln.to(device)).cpu() for ln in lines],
            "X: x = g(z)",
            None,
        ),
    ]
    for ax, pts, lns, title, _ in specs:
        for ln in lns:
            ax.plot(ln[:, 0], ln[:, 1], lw=0.5, color="grey", alpha=0.6)
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4, color="C1")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_title(title)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(run_dir / "grid_map.png", dpi=100)
    plt.close(fig)
    model.train()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
class RunLog:
    """config.json / log.jsonl / metrics.json of the run folder, written by rank 0 only."""

    def __init__(self, run_dir: Path | None, quiet: bool = False):
        self.run_dir = run_dir
        self.rows: list[dict] = []
        self.quiet = quiet

    def log(self, row: dict) -> None:
        self.rows.append(row)
        if self.run_dir is not None:
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def write_json(self, name: str, obj: dict) -> None:
        if self.run_dir is not None:
            tmp = self.run_dir / (name + ".tmp")
            tmp.write_text(json.dumps(obj, indent=2))
            os.replace(tmp, self.run_dir / name)

    def say(self, msg: str) -> None:
        if self.run_dir is not None and not self.quiet:
            tqdm.write(msg) if sys.stderr.isatty() else print(msg, flush=True)


def save_checkpoint(path: Path, model, optimizer, scheduler, state: dict, args) -> None:
    atomic_save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "args": vars(args),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
            **state,
        },
        path,
    )


def make_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=args.lr)  # Adam, default betas (Sec. 4.1)


def train_step(ddp_model, model, optimizer, loss_fn, args, step: int, ctx: Dist) -> float:
    loss_data = loss_fn()
    check_finite(loss_data, step, ctx)
    loss = loss_data + args.l2_scale * scale_l2(model)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if args.clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
    optimizer.step()
    return float(loss_data.detach())


def train_images(args, ctx: Dist, run_dir: Path | None, log: RunLog) -> dict:
    from torch.utils.data.distributed import DistributedSampler

    device = ctx.device
    train_u8, test_u8 = load_image_data(args.dataset, args.data_root)
    if args.test_limit:
        test_u8 = test_u8[: args.test_limit]
    train_u8, test_u8 = train_u8.to(device), test_u8.to(device)
    model = build_model(args).to(device)
    optimizer = make_optimizer(model, args)
    n_params = sum(p.numel() for p in model.parameters())
    start_epoch, step, elapsed_before = 0, 0, 0.0
    if args.resume:
        ckpt = torch.load(args.resume, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, step, elapsed_before = ckpt["epochs_done"], ckpt["step"], ckpt["elapsed_s"]
        torch.set_rng_state(ckpt["rng"]["torch"])
    per_rank = args.batch_size // ctx.world
    # Data-dependent ActNorm init on this process's first batch; DDP then broadcasts rank 0's
    # parameters to every process, so all start identical.
    if args.norm == "act" and not args.resume:
        g0 = torch.Generator(device=device).manual_seed(args.seed + ctx.rank)
        first = train_u8[torch.randperm(len(train_u8), device=device, generator=g0)[:per_rank]]
        model.train()
        with torch.no_grad():
            model(logit_transform(dequantize(first, g0), args.logit_alpha)[0])
    ddp_model = model
    if ctx.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler = DistributedSampler(
        range(len(train_u8)), num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=args.seed
    )
    steps_per_epoch = len(sampler) // per_rank
    D = model.num_dims
    scheduler = None
    if args.lr_schedule == "cosine":
        planned = args.epochs * steps_per_epoch
        planned = min(planned, args.steps) if args.steps else planned
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(planned, 1))
        if args.resume and ckpt.get("scheduler"):
            scheduler.load_state_dict(ckpt["scheduler"])
            scheduler.T_max = max(planned, 1)  # a resumed run may plan more epochs

    def bn_batches(n: int):
        g = torch.Generator(device=device).manual_seed(args.seed + 777 + ctx.rank)
        for _ in range(n):
            idx = torch.randint(0, len(train_u8), (per_rank,), device=device, generator=g)
            yield logit_transform(dequantize(train_u8[idx], g), args.logit_alpha)[0]

    def evaluate() -> float:
        if recompute_batchnorm_stats(model, bn_batches(args.bn_recompute_batches)) and ctx.enabled:
            for buf_name, buf in model.named_buffers():  # average the re-estimates over processes
                if buf.is_floating_point() and "running" in buf_name:
                    dist.all_reduce(buf)
                    buf /= ctx.world
        return evaluate_images(model, test_u8, args, device, ctx)

    log.say(
        f"real_nvp {args.dataset}: {n_params / 1e6:.2f}M params, {ctx.world} process(es) on "
        f"{device}, {steps_per_epoch} steps/epoch of {args.batch_size}"
    )
    t0 = time.time() - elapsed_before
    stop = False
    test_bpd = train_bpd = float("nan")
    epoch = start_epoch
    images_seen, t_train = 0, 0.0
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(iter(sampler)), device=device)
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{args.epochs}",
            disable=not (sys.stderr.isatty() and ctx.is_main),
        )
        running, n_running, epoch_sum, epoch_n = 0.0, 0, 0.0, 0
        for i in bar:
            idx = order[i * per_rank : (i + 1) * per_rank]
            x = dequantize(train_u8[idx])
            t_step = time.time()

            def loss_fn(x=x):
                return bits_per_dim(image_log_prob(ddp_model, x, args.logit_alpha), D).mean()

            loss = train_step(ddp_model, model, optimizer, loss_fn, args, step, ctx)
            if scheduler is not None:
                scheduler.step()
            t_train += time.time() - t_step
            images_seen += per_rank * ctx.world
            step += 1
            running += loss
            n_running += 1
            epoch_sum += loss
            epoch_n += 1
            if step % args.log_every == 0:
                bpd = ctx.sum([running / n_running])[0] / ctx.world
                log.log(
                    {"step": step, "epoch": epoch, "train_bpd": bpd, "elapsed_s": time.time() - t0}
                )
                bar.set_postfix(bpd=f"{bpd:.3f}")
                if not sys.stderr.isatty():
                    log.say(f"step {step} epoch {epoch + 1} train bpd {bpd:.4f}")
                running, n_running = 0.0, 0
            if args.eval_every and step % args.eval_every == 0:
                test_bpd = evaluate()
                log.log(
                    {
                        "step": step,
                        "epoch": epoch,
                        "test_bpd": test_bpd,
                        "elapsed_s": time.time() - t0,
                    }
                )
                log.say(f"step {step} test bpd {test_bpd:.4f}")
            if (args.steps and step >= args.steps) or (
                args.time_limit_min and time.time() - t0 >= args.time_limit_min * 60
            ):
                stop = True
                break
        bar.close()
        train_bpd = ctx.sum([epoch_sum / max(epoch_n, 1)])[0] / ctx.world
        test_bpd = evaluate()
        elapsed = time.time() - t0
        log.log(
            {
                "epoch": epoch + 1,
                "step": step,
                "train_bpd_epoch": train_bpd,
                "test_bpd": test_bpd,
                "elapsed_s": elapsed,
            }
        )
        log.say(
            f"epoch {epoch + 1}: train bpd {train_bpd:.4f}  test bpd {test_bpd:.4f}  "
            f"({elapsed / 60:.1f} min)"
        )
        if ctx.is_main and run_dir is not None:
            state = {"epochs_done": epoch + 1, "step": step, "elapsed_s": elapsed}
            save_checkpoint(run_dir / "checkpoint.pt", model, optimizer, scheduler, state, args)
        if stop:
            break
    if math.isnan(test_bpd):  # resumed a finished run: still report its numbers
        test_bpd = evaluate()
    metrics = {
        "dataset": args.dataset,
        "test_bpd": test_bpd,
        "train_bpd_last_epoch": train_bpd,
        "epochs_done": epoch + 1 if args.epochs > start_epoch else start_epoch,
        "steps": step,
        "wall_time_s": time.time() - t0,
        "params": n_params,
        "train_images_per_s": images_seen / t_train if t_train else None,
        "world_size": ctx.world,
        "norm": args.norm,
        "logit_alpha": args.logit_alpha,
        "st_dtype": "bfloat16" if st_uses_bf16(args) else "float32",
        "lr_schedule": args.lr_schedule,
    }
    if ctx.is_main and run_dir is not None:
        metrics.update(image_figures(model, test_u8, args, device, run_dir))
        plot_curve(
            log.rows, "elapsed_s", ["train_bpd", "test_bpd"], run_dir / "bpd_curve.png", "bits/dim"
        )
    return metrics


def train_toy(args, ctx: Dist, run_dir: Path | None, log: RunLog) -> dict:
    device = ctx.device
    model = build_model(args).to(device)
    optimizer = make_optimizer(model, args)
    # Cosine decay to 0 over --steps: the last steps average out the minibatch noise.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(args.steps, 1))
    step, elapsed_before = 0, 0.0
    data_gen = torch.Generator().manual_seed(args.seed + 1000 * ctx.rank)
    if args.resume:
        ckpt = torch.load(args.resume, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step, elapsed_before = ckpt["step"], ckpt["elapsed_s"]
        data_gen.set_state(ckpt["data_gen"])
    per_rank = args.batch_size // ctx.world
    if args.norm == "act" and not args.resume:
        model.train()
        with torch.no_grad():
            model(sample_toy(args.dataset, per_rank, data_gen).to(device))
    ddp_model = model
    if ctx.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(model)
    # A fixed test set from a separate seed; the exact density of the generator on the same points
    # gives a paired estimate of KL(data || model) = NLL_model - NLL_true >= 0.
    test_x = sample_toy(args.dataset, args.toy_test_size, torch.Generator().manual_seed(99991))
    true_logp = toy_log_density(args.dataset, test_x)
    ent = toy_entropy(args.dataset)
    test_x = test_x.to(device)

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        recompute_batchnorm_stats(
            model,
            (
                sample_toy(args.dataset, per_rank, torch.Generator().manual_seed(5 + k)).to(device)
                for k in range(args.bn_recompute_batches)
            ),
        )
        model.eval()
        nll = -torch.cat([log_prob(model, c) for c in test_x.split(args.eval_batch_size)])
        model.train()
        return float(nll.mean()), float(nll.std() / math.sqrt(len(nll)))

    eval_every = args.eval_every or max(args.steps // 10, 1)
    t0 = time.time() - elapsed_before
    if step == 0:
        nll0, _ = evaluate()
        log.log({"step": 0, "test_nll": nll0, "elapsed_s": 0.0})
    ent_txt = f"entropy {ent[0]:.4f} +- {ent[1]:.4f} nats" if ent else "entropy: no closed form"
    log.say(f"real_nvp {args.dataset}: {ent_txt}")
    bar = tqdm(
        range(step, args.steps),
        desc=args.dataset,
        disable=not (sys.stderr.isatty() and ctx.is_main),
    )
    test_nll = test_se = float("nan")
    for _ in bar:
        x = sample_toy(args.dataset, per_rank, data_gen).to(device)
        loss = train_step(
            ddp_model, model, optimizer, lambda x=x: -log_prob(ddp_model, x).mean(), args, step, ctx
        )
        scheduler.step()
        step += 1
        if step % args.log_every == 0:
            bar.set_postfix(nll=f"{loss:.3f}")
        if step % eval_every == 0 or step == args.steps:
            test_nll, test_se = evaluate()
            row = {
                "step": step,
                "train_nll": loss,
                "test_nll": test_nll,
                "elapsed_s": time.time() - t0,
            }
            log.log(row)
            if not sys.stderr.isatty():
                log.say(f"step {step} train nll {loss:.4f} test nll {test_nll:.4f}")
        if args.time_limit_min and time.time() - t0 >= args.time_limit_min * 60:
            break
    if math.isnan(test_nll):
        test_nll, test_se = evaluate()
    if ctx.is_main and run_dir is not None:
        state = {"step": step, "elapsed_s": time.time() - t0, "data_gen": data_gen.get_state()}
        save_checkpoint(run_dir / "checkpoint.pt", model, optimizer, scheduler, state, args)
    metrics = {
        "dataset": args.dataset,
        "test_nll": test_nll,
        "test_nll_se": test_se,
        "entropy": ent[0] if ent else None,
        "entropy_se": ent[1] if ent else None,
        "gap_to_entropy": test_nll - ent[0] if ent else None,
        "steps": step,
        "wall_time_s": time.time() - t0,
        "params": sum(p.numel() for p in model.parameters()),
    }
    if true_logp is not None and torch.isfinite(true_logp).all():
        model.eval()
        with torch.no_grad():
            model_logp = torch.cat([log_prob(model, c) for c in test_x.split(args.eval_batch_size)])
        diff = true_logp.to(device).double() - model_logp.double()
        metrics["true_nll_on_test"] = float(-true_logp.mean())
        metrics["kl_estimate"] = float(diff.mean())
        metrics["kl_estimate_se"] = float(diff.std() / math.sqrt(len(diff)))
    log.say(
        f"test NLL {test_nll:.4f} +- {test_se:.4f} nats/point; {ent_txt}"
        + (f"; gap {test_nll - ent[0]:+.4f}" if ent else "")
    )
    if ctx.is_main and run_dir is not None:
        toy_figures(model, args, device, run_dir)
        plot_curve(log.rows, "step", ["test_nll"], run_dir / "nll_curve.png", "test NLL (nats)")
    return metrics


def generate(args: argparse.Namespace) -> None:
    """--generate N --checkpoint PATH --samples-out FILE.npy: sample without training."""
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"error: checkpoint {args.checkpoint} not found")
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    saved = argparse.Namespace(**ckpt["args"])
    device = pick_device(args.device)
    model = build_model(saved).to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    torch.manual_seed(args.seed)
    out = []
    with torch.no_grad():
        for start in range(0, args.generate, 500):
            n = min(500, args.generate - start)
            if saved.dataset in TOY_DATASETS:
                out.append(model.inverse(torch.randn(n, 2, device=device) * args.temperature).cpu())
            else:
                imgs = sample_images(model, n, args.temperature, saved.logit_alpha, device)
                out.append((imgs * 255).round().to(torch.uint8))
    arr = torch.cat(out).numpy()
    Path(args.samples_out).parent.mkdir(parents=True, exist_ok=True)
    np.save(args.samples_out, arr)
    print(f"wrote {arr.shape} {arr.dtype} samples (T={args.temperature}) to {args.samples_out}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if args.generate:
        generate(args)
        return
    if args.resume and not Path(args.resume).is_file():
        raise SystemExit(f"error: --resume {args.resume}: no such checkpoint")
    if args.resume and args.dataset not in TOY_DATASETS:
        # The logit transform is part of the density the checkpoint models, and its default has
        # changed (0.05 -> 1e-6 on MNIST): continue with the checkpoint's value.
        saved = torch.load(args.resume, map_location="cpu", weights_only=False)["args"]
        if saved.get("logit_alpha", args.logit_alpha) != args.logit_alpha:
            print(f"--resume: using the checkpoint's --logit-alpha {saved['logit_alpha']}")
            args.logit_alpha = saved["logit_alpha"]
    ctx = Dist(args.device)
    if ctx.enabled and ctx.device.type == "cpu" and not args.num_threads:
        # several processes share the cores: one slice each instead of oversubscribing
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    try:
        seed_everything(args.seed + ctx.rank)
        run_dir = None
        if ctx.is_main:
            run_dir = Path(args.out) / Path(__file__).stem / args.run_name
            run_dir.mkdir(parents=True, exist_ok=True)
        log = RunLog(run_dir)
        config = {
            **vars(args),
            "world_size": ctx.world,
            "device_used": str(ctx.device),
            "per_process_batch": args.batch_size // ctx.world,
            "torch_threads": torch.get_num_threads(),
        }
        log.write_json("config.json", config)
        trainer = train_toy if args.dataset in TOY_DATASETS else train_images
        metrics = trainer(args, ctx, run_dir, log)
        log.write_json("metrics.json", metrics)
        if run_dir is not None:
            log.say(f"wrote {run_dir}")
    finally:
        ctx.close()


if __name__ == "__main__":
    main()
