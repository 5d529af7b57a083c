"""A 1-D GAN that turns uniform noise into Normal(4, 1.25), with a discriminator that judges
whole minibatches.

The generator maps u ~ U(0, 1) through a 1 -> 5 -> 5 -> 1 tanh network; the discriminator
never sees single values but a whole minibatch of 500, after one of five preprocessing modes
(`--mode`): `raw` (the 500 values), `diffs` (values + deviations from the batch mean),
`variances` (values + squared deviations), `moments` (mean, std, skewness, excess kurtosis:
the default) or `quantiles` (our addition: batch mean and std plus the standardised sorted
batch, i.e. the empirical quantile function, averaged in 20 blocks; see preprocess_quantiles,
trained with its own recipe: four times the learning rates, LR decay, a moving average of G
and an R1 penalty on D; see RECIPES).
This is devnag's 2018 design as the source notes adapt it, rewritten for current PyTorch (no
retain_graph, everything created on the training device, gradients of the preprocessing flow
through the batch mean).

Paper: Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014: the minimax value
function (Eq. 1), the non-saturating generator loss -log D(G(z)) (Sec. 3), and Algorithm 1
(k discriminator steps, then generator steps; here k = 20 and 20 generator steps per epoch).
R1 penalty: Mescheder, Geiger and Nowozin, "Which Training Methods for GANs do actually
Converge?", ICML 2018 (Eq. 9).

Full run (5000 epochs x (20 D + 20 G steps); see the README for measured times):
    python gan_1d_normal.py                      # default mode: moments
    python gan_1d_normal.py --mode quantiles      # ours: shape right too (its own recipe)
    python gan_1d_normal.py --mode all           # all five modes + comparison
Quick run (seconds):
    python gan_1d_normal.py --epochs 50 --print-every 10 --run-name quick

Writes outputs/gan_1d_normal/<run-name>/ (with --mode all, one such folder per mode under it
plus comparison.json / comparison.png): config.json, metrics.json (generated mean, std,
skewness, excess kurtosis, KS statistic and 1-Wasserstein distance to the target, from 10,000
samples), log.jsonl, histograms.png (generated vs target density at several epochs),
moments.png (mean and std per epoch vs the target), input_distribution.png (the uniform input
and the learned map u -> G(u) against the ideal inverse CDF), samples.npy (10,000 generated
values from the final G) and checkpoint.pt (`--resume` continues the run in its folder).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import special, stats
from tqdm import tqdm

MODES = ("raw", "diffs", "variances", "moments", "quantiles")


# ----------------------------------------------------------------------------- config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--mode",
        default="moments",
        choices=(*MODES, "all"),
        help="what the discriminator sees of each minibatch; 'all' runs every mode",
    )
    p.add_argument("--mean", type=float, default=4.0, help="target Normal mean")
    p.add_argument("--std", type=float, default=1.25, help="target Normal standard deviation")
    p.add_argument("--epochs", type=int, default=5000)
    p.add_argument("--d-steps", type=int, default=20, help="discriminator updates per epoch")
    p.add_argument("--g-steps", type=int, default=20, help="generator updates per epoch")
    p.add_argument(
        "--batch-size",
        type=int,
        default=500,
        help="samples per minibatch (the discriminator judges one minibatch at a time)",
    )
    p.add_argument("--g-hidden", type=int, default=5)
    p.add_argument("--d-hidden", type=int, default=10)
    # The next five default to the mode's recipe (RECIPES): the notes' for their four modes,
    # ours for quantiles. A flag given on the command line overrides it, in every mode.
    p.add_argument("--lr-d", type=float, default=None, help="default: the mode's recipe")
    p.add_argument("--lr-g", type=float, default=None, help="default: the mode's recipe")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum, both nets")
    p.add_argument(
        "--lr-decay",
        default=None,
        choices=("none", "linear"),
        help="linear: both learning rates fall linearly to 0 at the last epoch (damps the "
        "oscillation of the final iterate); default: the mode's recipe",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=None,
        help="per-epoch decay of a moving average of G's weights used for evaluation and plots "
        "(0 = evaluate the last G); default: the mode's recipe",
    )
    p.add_argument(
        "--r1-gamma",
        type=float,
        default=None,
        help="R1 penalty gamma/2 * ||grad D||^2 at real batches, on D's input features "
        "(Mescheder et al. 2018, Eq. 9; 0 = off); default: the mode's recipe",
    )
    p.add_argument("--print-every", type=int, default=100, help="epochs between log lines")
    p.add_argument(
        "--snapshots",
        type=int,
        default=8,
        help="epochs (evenly spaced, first and last included) shown in histograms.png",
    )
    p.add_argument("--eval-samples", type=int, default=10_000)
    p.add_argument("--checkpoint-every", type=int, default=1000, help="epochs")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; these nets are so small that more threads only add "
        "synchronisation overhead",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default="data", help="unused: the data is synthetic")
    p.add_argument("--out", default="outputs")
    p.add_argument("--run-name", default=time.strftime("%Y%m%d-%H%M%S"))
    p.add_argument(
        "--resume",
        default=None,
        metavar="PATH",
        help="checkpoint.pt to continue from (the run continues in its folder)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in (
        "epochs",
        "d_steps",
        "g_steps",
        "print_every",
        "eval_samples",
        "g_hidden",
        "d_hidden",
        "checkpoint_every",
        "threads",
        "snapshots",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.batch_size < 4:
        parser.error("--batch-size must be >= 4 (the moments need a few samples)")
    if args.ema is not None and not 0 <= args.ema < 1:
        parser.error("--ema must be in [0, 1)")
    if args.std <= 0:
        parser.error("--std must be > 0")
    if any(lr is not None and lr <= 0 for lr in (args.lr_d, args.lr_g)):
        parser.error("learning rates must be > 0")
    if not 0 <= args.momentum < 1:
        parser.error("--momentum must be in [0, 1)")
    if args.r1_gamma is not None and args.r1_gamma < 0:
        parser.error("--r1-gamma must be >= 0")
    if args.mode == "all" and args.resume:
        parser.error("--resume continues one run: give the single --mode of that checkpoint")
    if args.resume and not Path(args.resume).is_file():
        parser.error(f"--resume: no such file {args.resume}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available (use --device auto/cpu)")
    # --mode all fills the recipe per mode in main()
    return args if args.mode == "all" else with_recipe(args)


# Training recipes. `notes`: devnag's SGD setting as the notes use it, for their four modes.
# `quantiles` (ours, measured in README): both nets at 4x the notes' learning rate, falling
# linearly to 0, a moving average of G evaluated (the last iterate keeps circling the
# equilibrium), and an R1 penalty on D (Mescheder et al. 2018), which keeps D's sigmoid units
# out of saturation. Without R1 the same rates met the shape target on 3 of 3 seeds in one
# build of the code and on 1 of 3 after a change that only moved floating-point rounding; with
# R1 both builds met it on every seed, with nearly identical numbers.
RECIPES = {
    "notes": {"lr_d": 1e-3, "lr_g": 1e-3, "lr_decay": "none", "ema": 0.0, "r1_gamma": 0.0},
    "quantiles": {"lr_d": 4e-3, "lr_g": 4e-3, "lr_decay": "linear", "ema": 0.99, "r1_gamma": 1.0},
}


def with_recipe(args: argparse.Namespace) -> argparse.Namespace:
    """args with every recipe flag left unset (None) filled in from the mode's recipe."""
    recipe = RECIPES["quantiles" if args.mode == "quantiles" else "notes"]
    filled = {k: v for k, v in recipe.items() if getattr(args, k) is None}
    return argparse.Namespace(**{**vars(args), **filled})


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- data
# Real data: Normal(mean, std), sampled on the training device (the notes build it with NumPy on
# the CPU and then fail on a GPU). Generator input: U(0, 1), not Gaussian, so G must learn a
# non-linear map, ideally the inverse normal CDF u -> mean + std * Phi^-1(u).


def sample_real(
    shape: tuple[int, ...], mean: float, std: float, device: torch.device
) -> torch.Tensor:
    return torch.randn(shape, device=device) * std + mean


def sample_noise(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.rand(shape, device=device)


# ----------------------------------------------------------------------------- preprocessing
# Every function maps minibatches along the LAST axis, (..., B) -> (..., features), so all the
# discriminator steps of one epoch are preprocessed in one call. All are differentiable (the
# generator's gradient flows through the batch mean too; the notes detach it).


def preprocess_raw(x: torch.Tensor) -> torch.Tensor:
    return x


def preprocess_diffs(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x - x.mean(-1, keepdim=True)], -1)


def preprocess_variances(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, (x - x.mean(-1, keepdim=True)) ** 2], -1)


def moments_and_z(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std, skewness, excess kurtosis), population (biased) estimators, and the
    standardised batch z = (x - mean) / std that their gradient needs (moments_vjp)."""
    std, mean = torch.std_mean(x, dim=-1, keepdim=True, correction=0)
    z = (x - mean) / std
    z2 = z * z
    skewness = (z2 * z).mean(-1, keepdim=True)
    excess_kurtosis = (z2 * z2).mean(-1, keepdim=True) - 3.0  # 0 for a Gaussian
    return torch.cat([mean, std, skewness, excess_kurtosis], -1), z


def preprocess_moments(x: torch.Tensor) -> torch.Tensor:
    """(mean, std, skewness, excess kurtosis), population (biased) estimators."""
    return moments_and_z(x)[0]


QUANTILE_BLOCKS = 20


def preprocess_quantiles(x: torch.Tensor, blocks: int = QUANTILE_BLOCKS) -> torch.Tensor:
    """(mean, std, standardised empirical quantile function in `blocks` block means).

    The sorted batch is the empirical quantile function: a Normal is fixed by it, not by four
    moments, so a spike plus matching tails no longer fools D. Two changes make it trainable
    with this small sigmoid D and plain SGD (the 500 raw sorted values saturate D's hidden
    units within a few hundred epochs: the first-layer step grows with |input|^2 ~ 500 * 4^2):
    standardising by the batch mean/std (passed separately, so location and scale are still
    judged) keeps every input O(1), and averaging the sorted values in `blocks` equal-count
    blocks (25 order statistics each for B = 500) cuts their sampling noise."""
    std, mean = torch.std_mean(x, dim=-1, keepdim=True, correction=0)
    z = torch.sort((x - mean) / std, dim=-1).values
    lead = z.shape[:-1]
    # adaptive_avg_pool1d = means over `blocks` (near-)equal consecutive slices of the sorted z
    q = F.adaptive_avg_pool1d(z.reshape(-1, 1, z.shape[-1]), blocks).reshape(*lead, blocks)
    return torch.cat([mean, std, q], -1)


PREPROCESS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "raw": preprocess_raw,
    "diffs": preprocess_diffs,
    "variances": preprocess_variances,
    "moments": preprocess_moments,
    "quantiles": preprocess_quantiles,
}


def d_input_size(mode: str, batch_size: int) -> int:
    return {
        "raw": batch_size,
        "diffs": 2 * batch_size,
        "variances": 2 * batch_size,
        "moments": 4,
        "quantiles": QUANTILE_BLOCKS + 2,
    }[mode]


# ----------------------------------------------------------------------------- models


class Generator(nn.Module):
    """u -> x: 1 -> hidden -> hidden -> 1 with tanh, linear output."""

    def __init__(self, hidden: int = 5):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = (
            nn.Linear(1, hidden),
            nn.Linear(hidden, hidden),
            nn.Linear(hidden, 1),
        )

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # (..., B) -> (..., B)
        # F.linear on the weights instead of calling the submodules: for nets this small the
        # Module.__call__ machinery costs as much as the arithmetic.
        h = torch.tanh(F.linear(u.unsqueeze(-1), self.fc1.weight, self.fc1.bias))
        h = torch.tanh(F.linear(h, self.fc2.weight, self.fc2.bias))
        return F.linear(h, self.fc3.weight, self.fc3.bias).squeeze(-1)


class Discriminator(nn.Module):
    """Preprocessed minibatch -> one logit. Sigmoid hidden units as in devnag's design; the final
    sigmoid lives inside the loss (logits + softplus is the same BCE, without log(0))."""

    def __init__(self, in_features: int, hidden: int = 10):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(in_features, hidden), nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (..., F) -> (...)
        h = torch.sigmoid(F.linear(features, self.fc1.weight, self.fc1.bias))
        h = torch.sigmoid(F.linear(h, self.fc2.weight, self.fc2.bias))
        return F.linear(h, self.fc3.weight, self.fc3.bias).squeeze(-1)


class FlatParams:
    """A module's parameters packed into ONE contiguous tensor `flat`, each parameter a view of
    it, with a gradient tensor `grad` of the same layout (`views[i]` and `grads[i]` are the
    views matching parameters()[i]; `views_t[i]` is views[i] transposed). The hand-written
    backward writes each gradient straight into its view (out=), and the optimizer then updates
    every parameter with three ops on one tensor: torch's foreach ops take a per-tensor slow path
    on the CPU, and at this size each op costs more in dispatch than in arithmetic. Pack after
    moving the module to its device (.to() replaces the parameters' storage); load_state_dict
    copies in place, so it keeps the packing."""

    def __init__(self, module: nn.Module):
        self.params = list(module.parameters())
        self.flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        self.grad = torch.zeros_like(self.flat)
        views, grads, offset = [], [], 0
        for p in self.params:
            n = p.numel()
            views.append(self.flat[offset : offset + n].view_as(p))
            grads.append(self.grad[offset : offset + n].view_as(p))
            p.data = views[-1]
            offset += n
        # Plain tensors (no autograd) for the hand-written steps: a Module attribute lookup and
        # a grad-tracking Parameter each add about a microsecond per use at this size, and so
        # does taking a transpose, so the weights' transposed views are made once here too.
        self.views, self.grads = tuple(views), tuple(grads)
        self.views_t = tuple(v.t() if v.dim() == 2 else v for v in views)

    def set_grads(self, grads: tuple[torch.Tensor, ...]) -> None:
        """Copy per-parameter gradients (autograd's, parameters() order) into `grad`."""
        torch.cat([g.reshape(-1) for g in grads], out=self.grad)


class MomentumSGD:
    """SGD with heavy-ball momentum, the exact update of torch.optim.SGD(lr, momentum):
    buf <- momentum * buf + grad (buf = grad on the first step), p <- p - lr * buf, on the packed
    parameters of a FlatParams (their gradient is read from its `grad`). Written out because
    torch.optim's per-step bookkeeping (hooks, state lookup, zero_grad) took a quarter of the run
    time here; three in-place ops on one flat tensor do the whole update."""

    def __init__(self, packed: FlatParams, lr: float, momentum: float):
        self.packed = packed
        self.lr, self.momentum = lr, momentum
        self.buffer = torch.zeros_like(packed.flat)

    def step(self) -> None:
        self.buffer.mul_(self.momentum).add_(self.packed.grad)
        self.packed.flat.add_(self.buffer, alpha=-self.lr)

    def state_dict(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum, "buffer": self.buffer.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.momentum = state["lr"], state["momentum"]
        if "buffers" in state:  # checkpoints from before the packing: one buffer per parameter
            state = {"buffer": torch.cat([b.reshape(-1) for b in state["buffers"]])}
        self.buffer.copy_(state["buffer"])


# ----------------------------------------------------------------------------- losses
# With D = sigmoid(logit): -log D = softplus(-logit) and -log(1 - D) = softplus(logit).


def d_loss_terms(
    real_logit: torch.Tensor, fake_logit: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """D ascends log D(x) + log(1 - D(G(z))) (Eq. 1): we descend the two BCE terms."""
    return F.softplus(-real_logit), F.softplus(fake_logit)


def g_loss_nonsaturating(fake_logit: torch.Tensor) -> torch.Tensor:
    """-log D(G(z)): same fixed point as Eq. 1 but strong gradients early on (Sec. 3)."""
    return F.softplus(-fake_logit)


def r1_penalty(real_logit: torch.Tensor, features: torch.Tensor, gamma: float) -> torch.Tensor:
    """gamma/2 * ||d logit / d x||^2 at the real batch's features x (Mescheder et al. 2018,
    Eq. 9). It keeps D flat on the data, so its weights cannot grow until the sigmoid units
    saturate. `features` holds the real row 0 (and the fake row 1, whose gradient w.r.t. the
    real logit is 0); the graph is kept so that D can descend the penalty."""
    (grad,) = torch.autograd.grad(real_logit.sum(), features, create_graph=True)
    return 0.5 * gamma * grad.square().sum()


# ----------------------------------------------------------------------------- backprop by hand
# A step of these nets is a few dozen tiny tensor ops, each costing microseconds of dispatch, and
# autograd's graph bookkeeping more than doubles that. So the chain rule is written out for the
# two fixed MLPs and for the moments features (the default mode); the other modes' preprocessing
# keeps autograd on its own small graph. Checked against autograd for every mode in
# tests/test_gan_1d_normal.py. aten's sigmoid_backward(g, s) = g s (1 - s) and
# tanh_backward(g, t) = g (1 - t^2) are the fused kernels autograd itself uses.
_sigmoid_backward = torch.ops.aten.sigmoid_backward
_tanh_backward = torch.ops.aten.tanh_backward


def _mlp_sigmoid_forward(d: FlatParams, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    w1t, b1, w2t, b2, w3t, b3 = d.views_t
    h1 = torch.sigmoid(torch.addmm(b1, x, w1t))
    h2 = torch.sigmoid(torch.addmm(b2, h1, w2t))
    return h1, h2, torch.addmm(b3, h2, w3t)


def _linear_grads_into(
    grads: tuple[torch.Tensor, ...],
    inputs: tuple[torch.Tensor, ...],
    d_outs: tuple[torch.Tensor, ...],
) -> None:
    """Weight and bias gradients of three Linear layers, written into `grads` (weight, bias per
    layer, parameters() order): dL/dW = d_out^T @ input, dL/db = sum of d_out over the batch."""
    for i, (x, d_out) in enumerate(zip(inputs, d_outs, strict=True)):
        torch.mm(d_out.t(), x, out=grads[2 * i])
        torch.sum(d_out, 0, out=grads[2 * i + 1])


def discriminator_grads(d: FlatParams, features: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """D's logits on features (2, F) (row 0 real, row 1 fake); writes the gradient of D's loss
    softplus(-l_real) + softplus(l_fake) (Eq. 1) w.r.t. D's parameters into d.grad (d: D's
    packed parameters). sign = [[-1], [1]]: d softplus(-l)/dl = -sigmoid(-l) and
    d softplus(l)/dl = sigmoid(l)."""
    h1, h2, logits = _mlp_sigmoid_forward(d, features)  # logits (2, 1)
    d_logits = torch.sigmoid(logits * sign) * sign
    d_a2 = _sigmoid_backward(d_logits @ d.views[4], h2)
    d_a1 = _sigmoid_backward(d_a2 @ d.views[2], h1)
    _linear_grads_into(d.grads, (features, h1, h2), (d_a1, d_a2, d_logits))
    return logits.squeeze(-1)


def moments_vjp(
    z: torch.Tensor, features: torch.Tensor, grad_features: torch.Tensor
) -> torch.Tensor:
    """d(loss)/dx from d(loss)/d(mean, std, skewness, excess kurtosis) for one batch x (n,),
    with z = (x - mean) / std. Per sample, with s = std, S = skewness, K = excess kurtosis:
      d mean/dx_i = 1/n,  d std/dx_i = z_i/n,
      d S/dx_i = 3 (z_i^2 - 1 - S z_i) / (n s),  d K/dx_i = 4 (z_i^3 - S - (K + 3) z_i) / (n s),
    so the vector-Jacobian product is a cubic in z_i: (c0 + c1 z + c2 z^2 + c3 z^3) / n."""
    _, std, skew, kurt = features.unbind(-1)
    g_mean, g_std, g_skew, g_kurt = (grad_features / z.shape[-1]).unbind(-1)  # the 1/n, once
    # With p = g_skew / s and q = g_kurt / s: c2 = 3p, c3 = 4q, c0 = g_mean - 3p - 4qS and
    # c1 = g_std - 3pS - 4q(K + 3). Constants ride in alpha/value (a Python number in a tensor
    # expression costs a tensor allocation and a dtype copy per use, as much as the op itself).
    p, q = g_skew / std, g_kurt / std
    c0 = torch.addcmul(torch.add(g_mean, p, alpha=-3), q, skew, value=-4)
    c1 = torch.add(g_std, q, alpha=-12)
    c1 = torch.addcmul(torch.addcmul(c1, p, skew, value=-3), q, kurt, value=-4)
    # Horner: c0 + z (c1 + 3 z (p + (4/3) q z))
    inner = torch.addcmul(p, q, z, value=4 / 3)
    return torch.addcmul(c0, z, torch.addcmul(c1, z, inner, value=3))


def generator_grads(
    g: FlatParams, d: FlatParams, preprocess, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For noise u (B, 1): the generated batch x = G(u) (B,) and D's logit on preprocess(x);
    writes the gradient of G's loss softplus(-logit) = -log D(G(z)) (Sec. 3) w.r.t. G's
    parameters into g.grad (g, d: the nets' packed parameters). D is only read: it stays fixed
    during the G phase."""
    w1t, b1, w2t, b2, w3t, b3 = g.views_t
    h1 = torch.tanh(torch.addmm(b1, u, w1t))
    h2 = torch.tanh(torch.addmm(b2, h1, w2t))
    x = torch.addmm(b3, h2, w3t).squeeze(-1)  # (B,)
    if preprocess is preprocess_moments:
        features, z = moments_and_z(x)
    else:
        with torch.enable_grad():
            x.requires_grad_(True)
            graph_features = preprocess(x)
        features = graph_features.detach()
    k1, k2, logit = _mlp_sigmoid_forward(d, features.unsqueeze(0))  # logit (1, 1)
    d_logit = -torch.sigmoid(-logit)  # d softplus(-l) / dl
    d_k2 = _sigmoid_backward(d_logit @ d.views[4], k2)
    d_features = (_sigmoid_backward(d_k2 @ d.views[2], k1) @ d.views[0]).squeeze(0)
    if preprocess is preprocess_moments:
        d_x = moments_vjp(z, features, d_features)
    else:
        (d_x,) = torch.autograd.grad(graph_features, x, d_features)
        x = x.detach()
    d_x = d_x.unsqueeze(-1)  # (B, 1)
    d_a2 = _tanh_backward(d_x @ g.views[4], h2)
    d_a1 = _tanh_backward(d_a2 @ g.views[2], h1)
    _linear_grads_into(g.grads, (u, h1, h2), (d_a1, d_a2, d_x))
    return x, logit.reshape(())


# ----------------------------------------------------------------------------- training


def make_optimizers(G: nn.Module, D: nn.Module, args) -> tuple[MomentumSGD, MomentumSGD]:
    """Packs each net's parameters (FlatParams) and returns (D's optimizer, G's optimizer)."""
    return (
        MomentumSGD(FlatParams(D), args.lr_d, args.momentum),
        MomentumSGD(FlatParams(G), args.lr_g, args.momentum),
    )


def train_epoch(
    G: Generator,
    D: Discriminator,
    opt_d: MomentumSGD,
    opt_g: MomentumSGD,
    preprocess,
    args,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """One epoch of Algorithm 1: d_steps discriminator updates, then g_steps generator updates.
    Returns the last step's losses and batches as tensors (no host sync here: the caller reads
    them only every --print-every epochs)."""
    b = args.batch_size
    real = sample_real((args.d_steps, b), args.mean, args.std, device)
    with torch.no_grad():
        # G is frozen during the D phase, so all d_steps fake batches can come from one call.
        fake = G(sample_noise((args.d_steps, b), device))
    # Preprocessing has no parameters: do it for every D step at once. Row 0 real, row 1 fake.
    d_inputs = torch.stack([preprocess(real), preprocess(fake)], 1)  # (d_steps, 2, features)
    sign = torch.tensor([[-1.0], [1.0]], device=device)
    d_packed, g_packed = opt_d.packed, opt_g.packed
    for i in range(args.d_steps):
        if args.r1_gamma > 0:
            # R1 needs the gradient of a gradient: autograd here, graph kept for D's update.
            features = d_inputs[i].detach().requires_grad_(True)
            logits = D(features)
            d_real_err, d_fake_err = d_loss_terms(logits[0], logits[1])
            d_err = d_real_err + d_fake_err + r1_penalty(logits[0], features, args.r1_gamma)
            d_packed.set_grads(torch.autograd.grad(d_err, d_packed.params))
        else:
            logits = discriminator_grads(d_packed, d_inputs[i], sign)
        opt_d.step()

    # Generator phase: gradients w.r.t. G's parameters only; D stays fixed. Noise drawn as
    # (g_steps, B, 1), the column shape G's first layer takes.
    noise = sample_noise((args.g_steps, b, 1), device)
    for i in range(args.g_steps):
        fake, g_logit = generator_grads(g_packed, d_packed, preprocess, noise[i])
        opt_g.step()
    d_real_err, d_fake_err = d_loss_terms(logits[0].detach(), logits[1].detach())
    return {
        "d_real_err": d_real_err,
        "d_fake_err": d_fake_err,
        "g_err": g_loss_nonsaturating(g_logit),
        "real": real[-1],
        "fake": fake,
    }


@torch.no_grad()
def generate(G: Generator, n: int, device: torch.device) -> np.ndarray:
    return G(sample_noise((n,), device)).cpu().numpy().astype(np.float64)


# ----------------------------------------------------------------------------- evaluation


def describe(samples: np.ndarray) -> dict[str, float]:
    """Mean, std, skewness and excess kurtosis (population estimators, as the moments mode)."""
    x = np.asarray(samples, dtype=np.float64)
    mean = x.mean()
    z = (x - mean) / x.std()
    return {
        "mean": float(mean),
        "std": float(x.std()),
        "skewness": float(np.mean(z**3)),
        "excess_kurtosis": float(np.mean(z**4) - 3.0),
    }


def ks_to_normal(samples: np.ndarray, mean: float, std: float) -> float:
    """Kolmogorov-Smirnov statistic sup |F_n - F| against Normal(mean, std)."""
    return float(stats.kstest(samples, "norm", args=(mean, std)).statistic)


def wasserstein1_to_normal(samples: np.ndarray, mean: float, std: float) -> float:
    """Exact W1 = integral |F_n(x) - F(x)| dx between the empirical CDF of `samples` and
    Normal(mean, std). F_n is a step function, and F has the antiderivative
    A(x) = std * (t Phi(t) + phi(t)), t = (x - mean) / std, so every step integrates in closed
    form (no reference sample, no grid)."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = len(x)

    def antideriv(v: np.ndarray) -> np.ndarray:
        t = (v - mean) / std
        return std * (t * special.ndtr(t) + np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi))

    # Tails: F_n = 0 left of x_1, and 1 right of x_n.
    total = antideriv(x[0]) + (antideriv(x[-1]) - x[-1] + mean)  # int_{x_n}^inf (1 - F) dx
    # Between x_i and x_{i+1}, F_n = c = i / n; split where F crosses c.
    a, b = x[:-1], x[1:]
    c = np.arange(1, n) / n
    cross = np.clip(mean + std * special.ndtri(c), a, b)
    below = c * (cross - a) - (antideriv(cross) - antideriv(a))  # F < c on [a, cross]
    above = (antideriv(b) - antideriv(cross)) - c * (b - cross)  # F > c on [cross, b]
    return float(total + below.sum() + above.sum())


def evaluate(G: Generator, args, device: torch.device) -> tuple[dict[str, float], np.ndarray]:
    samples = generate(G, args.eval_samples, device)
    metrics = describe(samples)
    metrics["ks"] = ks_to_normal(samples, args.mean, args.std)
    metrics["w1"] = wasserstein1_to_normal(samples, args.mean, args.std)
    # Share of mass in the densest 0.1-std-wide bin: about 3.2% for the target, far more for a
    # generator that collapses part of its input onto a spike.
    counts, _ = np.histogram(
        samples, bins=np.arange(samples.min(), samples.max() + 0.1 * args.std, 0.1 * args.std)
    )
    metrics["max_bin_mass"] = float(counts.max() / len(samples))
    return metrics, samples


@torch.no_grad()
def discriminator_health(
    D: Discriminator, G: Generator, preprocess, args, device: torch.device, batches: int = 200
) -> dict[str, float]:
    """How much D can still see at the end of training, on `batches` real and fake minibatches.

    `d_first_layer_slope`: mean sigmoid'(pre-activation) of D's first hidden layer over real
    batches, relative to its maximum 1/4 (1: the units work in their linear range; near 0: they
    are saturated, so D's output no longer depends on its input and G gets no gradient).
    `d_real` / `d_fake`: mean D on real and generated batches (0.5 / 0.5 = D cannot tell)."""
    real = sample_real((batches, args.batch_size), args.mean, args.std, device)
    fake = G(sample_noise((batches, args.batch_size), device))
    feats = preprocess(real)
    pre = F.linear(feats, D.fc1.weight, D.fc1.bias)
    slope = torch.sigmoid(pre) * torch.sigmoid(-pre)  # sigmoid'(t) = s(t) s(-t), max 1/4
    return {
        "d_first_layer_slope": float(slope.mean() / 0.25),
        "d_real": float(torch.sigmoid(D(feats)).mean()),
        "d_fake": float(torch.sigmoid(D(preprocess(fake))).mean()),
    }


# ----------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_histograms(snapshots: dict[int, np.ndarray], args, path: Path, title: str) -> None:
    plt = _plt()
    epochs = sorted(snapshots)
    cols = min(4, len(epochs))
    rows = math.ceil(len(epochs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    grid = np.linspace(args.mean - 4 * args.std, args.mean + 4 * args.std, 400)
    pdf = stats.norm.pdf(grid, args.mean, args.std)
    for ax in axes.flat[len(epochs) :]:
        ax.axis("off")
    for ax, epoch in zip(axes.flat, epochs, strict=False):
        x = snapshots[epoch]
        lo, hi = min(grid[0], np.percentile(x, 0.5)), max(grid[-1], np.percentile(x, 99.5))
        ax.hist(
            x,
            bins=60,
            range=(lo, hi),
            density=True,
            color="tab:orange",
            alpha=0.7,
            label="generated",
        )
        ax.plot(grid, pdf, color="k", lw=1.2, label="target")
        ax.set_ylim(0, max(1.5 * pdf.max(), 1e-3))  # a spike may exceed the frame: it says so
        ax.set_title(f"epoch {epoch}  mean {x.mean():.2f} std {x.std():.2f}", fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_moments(traj: np.ndarray, args, path: Path, title: str) -> None:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = np.arange(len(traj))
    ax1.plot(epochs, traj[:, 0], lw=0.6, label="generated batch mean")
    ax1.axhline(args.mean, color="k", ls="--", label=f"target {args.mean:g}")
    ax2.plot(epochs, traj[:, 1], lw=0.6, color="tab:orange", label="generated batch std")
    ax2.axhline(args.std, color="k", ls="--", label=f"target {args.std:g}")
    for ax in (ax1, ax2):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@torch.no_grad()
def plot_input_distribution(G: Generator, args, device: torch.device, path: Path) -> None:
    plt = _plt()
    u = sample_noise((args.eval_samples,), device).cpu().numpy()
    grid = torch.linspace(0.001, 0.999, 500, device=device)
    mapped = G(grid).cpu().numpy()
    grid = grid.cpu().numpy()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.hist(u, bins=50, color="tab:blue", alpha=0.7)
    ax1.set_xlabel("u")
    ax1.set_ylabel("count")
    ax1.set_title(f"generator input: U(0, 1), {len(u)} draws", fontsize=9)
    ideal = args.mean + args.std * special.ndtri(grid)
    # either monotone map pushes U(0, 1) onto the target: mean + std * Phi^-1(u) or (1 - u)
    ax2.plot(grid, ideal, "k--", lw=1, label="ideal maps (increasing or decreasing)")
    ax2.plot(grid, ideal[::-1], "k--", lw=1)
    ax2.plot(grid, mapped, color="tab:orange", label="learned G(u)")
    ax2.set_xlabel("u")
    ax2.set_ylabel("G(u)")
    ax2.set_title("flat stretches of G(u) = spikes in the histogram", fontsize=9)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_comparison(
    finals: dict[str, np.ndarray], results: dict[str, dict], args, path: Path
) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(finals), figsize=(3.0 * len(finals), 2.8), squeeze=False)
    grid = np.linspace(args.mean - 4 * args.std, args.mean + 4 * args.std, 400)
    pdf = stats.norm.pdf(grid, args.mean, args.std)
    for ax, (mode, x) in zip(axes[0], finals.items(), strict=True):
        ax.hist(x, bins=60, range=(grid[0], grid[-1]), density=True, color="tab:orange", alpha=0.7)
        ax.plot(grid, pdf, "k", lw=1.2)
        ax.set_ylim(0, 1.5 * pdf.max())
        m = results[mode]
        ax.set_title(f"{mode}\nstd {m['std']:.2f} KS {m['ks']:.3f} W1 {m['w1']:.3f}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- checkpoint


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a torn checkpoint


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- main


def snapshot_epochs(epochs: int, count: int) -> list[int]:
    """`count` evenly spaced epochs from 0 to `epochs` (after training) inclusive."""
    return sorted({round(i * epochs / max(count - 1, 1)) for i in range(count)})


def run(args, run_dir: Path, device: torch.device) -> dict[str, float]:
    """Train one mode in `run_dir`; returns its metrics."""
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)
    preprocess = PREPROCESS[args.mode]
    G = Generator(args.g_hidden).to(device)
    # Exponential moving average of G's weights, updated once per epoch (Polyak averaging of
    # the generator iterates, Yazici et al., ICLR 2019): the last iterate keeps circling the
    # equilibrium, the average sits nearer to it. Training never uses it.
    G_avg = copy.deepcopy(G).requires_grad_(False)
    D = Discriminator(d_input_size(args.mode, args.batch_size), args.d_hidden).to(device)
    opt_d, opt_g = make_optimizers(G, D, args)
    start_epoch = 0
    # Per-epoch mean/std of the last generated batch, kept on the device (no per-epoch sync).
    traj = torch.zeros(args.epochs, 2, device=device)
    snapshots: dict[int, np.ndarray] = {}
    if args.resume:
        ckpt = torch.load(args.resume, map_location=device, weights_only=False)
        if ckpt["mode"] != args.mode or ckpt["batch_size"] != args.batch_size:
            raise SystemExit(
                f"error: checkpoint is mode {ckpt['mode']!r}, batch {ckpt['batch_size']}; "
                f"got --mode {args.mode} --batch-size {args.batch_size}"
            )
        G.load_state_dict(ckpt["G"])
        G_avg.load_state_dict(ckpt["G_avg"])
        D.load_state_dict(ckpt["D"])
        opt_d.load_state_dict(ckpt["opt_d"])
        opt_g.load_state_dict(ckpt["opt_g"])
        start_epoch = ckpt["epoch"]
        old = ckpt["traj"].to(device)[: args.epochs]
        traj[: len(old)] = old
        snapshots = ckpt["snapshots"]
        set_rng_state(ckpt["rng"])
        print(f"resumed {args.resume} at epoch {start_epoch}")
    if start_epoch >= args.epochs:
        print(
            f"checkpoint already at epoch {start_epoch} >= --epochs {args.epochs}; evaluating only"
        )

    config = {
        **vars(args),
        "run_dir": str(run_dir),
        "device_used": str(device),
        "d_input_size": d_input_size(args.mode, args.batch_size),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))

    wanted = snapshot_epochs(args.epochs, args.snapshots)
    snap_n = min(args.eval_samples, 5000)
    if 0 in wanted and 0 not in snapshots:
        snapshots[0] = generate(G, snap_n, device)

    def checkpoint(epoch: int) -> None:
        save_checkpoint(
            run_dir / "checkpoint.pt",
            {
                "epoch": epoch,
                "mode": args.mode,
                "batch_size": args.batch_size,
                "G": G.state_dict(),
                "G_avg": G_avg.state_dict(),
                "D": D.state_dict(),
                "opt_d": opt_d.state_dict(),
                "opt_g": opt_g.state_dict(),
                "traj": traj[:epoch].cpu(),
                "snapshots": snapshots,
                "rng": rng_state(),
                "args": vars(args),
            },
        )

    g_params, avg_params = list(G.parameters()), list(G_avg.parameters())
    G_eval = G_avg if args.ema > 0 else G
    tty = sys.stderr.isatty()
    t0 = time.perf_counter()
    with open(run_dir / "log.jsonl", "a") as log:
        bar = tqdm(
            range(start_epoch, args.epochs),
            disable=not tty,
            desc=args.mode,
            initial=start_epoch,
            total=args.epochs,
        )
        for epoch in bar:
            if args.lr_decay == "linear":
                opt_d.lr = args.lr_d * (1 - epoch / args.epochs)
                opt_g.lr = args.lr_g * (1 - epoch / args.epochs)
            out = train_epoch(G, D, opt_d, opt_g, preprocess, args, device)
            if args.ema > 0:
                with torch.no_grad():
                    torch._foreach_lerp_(avg_params, g_params, 1.0 - args.ema)
            traj[epoch] = torch.stack(torch.std_mean(out["fake"], correction=0)[::-1])
            done = epoch + 1
            if done in wanted:
                snapshots[done] = generate(G_eval, snap_n, device)
            if epoch % args.print_every == 0 or done == args.epochs:
                rs, rm = torch.std_mean(out["real"], correction=0)
                fm, fs = traj[epoch].tolist()
                row = {
                    "epoch": epoch,
                    "d_real_err": out["d_real_err"].item(),
                    "d_fake_err": out["d_fake_err"].item(),
                    "g_err": out["g_err"].item(),
                    "real_mean": rm.item(),
                    "real_std": rs.item(),
                    "fake_mean": fm,
                    "fake_std": fs,
                    "seconds": round(time.perf_counter() - t0, 2),
                }
                log.write(json.dumps(row) + "\n")
                log.flush()
                msg = (
                    f"D ({row['d_real_err']:.3f} real_err, {row['d_fake_err']:.3f} fake_err) "
                    f"G ({row['g_err']:.3f} err); real ({rm.item():.3f}, {rs.item():.3f}) "
                    f"fake ({fm:.3f}, {fs:.3f})"
                )
                if tty:
                    bar.set_postfix_str(msg)
                else:
                    print(f"[{args.mode}] epoch {epoch}: {msg}", flush=True)
            if done % args.checkpoint_every == 0 or done == args.epochs:
                checkpoint(done)
    train_seconds = time.perf_counter() - t0

    metrics, samples = evaluate(G_eval, args, device)
    metrics["evaluated_generator"] = "ema" if args.ema > 0 else "raw"
    if args.ema > 0:
        raw, _ = evaluate(G, args, device)
        metrics["raw_generator"] = {
            k: raw[k] for k in ("mean", "std", "skewness", "excess_kurtosis", "ks", "w1")
        }
    metrics.update(discriminator_health(D, G, preprocess, args, device))
    metrics.update(
        mode=args.mode,
        epochs=args.epochs,
        train_seconds=round(train_seconds, 2),
        epochs_this_run=args.epochs - start_epoch,
    )
    np.save(run_dir / "samples.npy", samples.astype(np.float32))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    title = f"gan_1d_normal, mode {args.mode}, seed {args.seed}"
    plot_histograms(
        {k: v for k, v in snapshots.items() if k <= args.epochs},
        args,
        run_dir / "histograms.png",
        title,
    )
    plot_moments(traj[: args.epochs].cpu().numpy(), args, run_dir / "moments.png", title)
    plot_input_distribution(G_eval, args, device, run_dir / "input_distribution.png")
    print(
        f"[{args.mode}] done in {train_seconds:.1f}s: mean {metrics['mean']:.3f} std {metrics['std']:.3f} "
        f"skew {metrics['skewness']:.3f} kurt {metrics['excess_kurtosis']:.3f} "
        f"KS {metrics['ks']:.4f} W1 {metrics['w1']:.4f} -> {run_dir}",
        flush=True,
    )
    return metrics


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if args.resume:
        run_dir = Path(args.resume).resolve().parent
    else:
        run_dir = Path(args.out) / Path(__file__).stem / args.run_name
    if args.mode != "all":
        run(args, run_dir, device)  # parse_args filled the mode's recipe
        return
    results, finals = {}, {}
    for mode in MODES:
        sub = with_recipe(argparse.Namespace(**{**vars(args), "mode": mode}))
        results[mode] = run(sub, run_dir / mode, device)
        finals[mode] = np.load(run_dir / mode / "samples.npy")
    (run_dir / "config.json").write_text(json.dumps({**vars(args), "modes": list(MODES)}, indent=2))
    (run_dir / "comparison.json").write_text(json.dumps(results, indent=2))
    plot_comparison(finals, results, args, run_dir / "comparison.png")
    print(
        f"{'mode':<10} {'mean':>7} {'std':>7} {'skew':>7} {'kurt':>7} {'KS':>7} {'W1':>7} {'s':>6}"
    )
    for mode, m in results.items():
        print(
            f"{mode:<10} {m['mean']:7.3f} {m['std']:7.3f} {m['skewness']:7.3f} "
            f"{m['excess_kurtosis']:7.3f} {m['ks']:7.4f} {m['w1']:7.4f} {m['train_seconds']:6.1f}"
        )


if __name__ == "__main__":
    main()
