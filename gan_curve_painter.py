"""The "artist" GAN: a generator learns to paint curves that lie between two parabolas.

Each real painting is 15 points of y = a x^2 + (a - 1) at x in linspace(-1, 1, 15), with
a ~ U(1, 2): every such curve lies between the lower bound x^2 (a = 1) and the upper bound
2 x^2 + 1 (a = 2). G maps a 5-d Gaussian "idea" through 5 -> 128 -> 15 (ReLU) to a painting;
D judges a painting through 15 -> 128 -> 1 (ReLU, sigmoid). Batch 64, 10,000 steps: MorvanZhou's
tutorial as the source notes retell it, with the losses fixed (the notes' generator loss
-1/mean(log(1 - D)) is not the GAN objective) and an update order that needs no retain_graph:
D steps on detached fakes, then G steps against the updated D. One change of recipe: Adam at
lr 6e-4 with betas (0, 0.9) for both nets instead of the tutorial's lr 1e-4 with torch's
default betas (`--preset tutorial`), which is still far from done at 10,000 steps.

Paper: Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014: D ascends
log D(x) + log(1 - D(G(z))) (Eq. 1); G descends log(1 - D(G(z))) (`--g-loss minimax`, Eq. 1)
or -log D(G(z)) (`--g-loss nonsaturating`, Sec. 3); one D step per G step (Algorithm 1, k = 1).
Evaluation uses an exponential moving average of G's weights (`--ema`, Polyak averaging of the
generator iterates, Yazici et al., "The Unusual Effectiveness of Averaging in GAN Training",
ICLR 2019): the raw G keeps circling the equilibrium, its average sits nearer to it.

Full run (10,000 steps, well under a minute on one CPU core):
    python gan_curve_painter.py
    python gan_curve_painter.py --preset tutorial     # the tutorial's optimizer settings
Quick run (seconds):
    python gan_curve_painter.py --steps 300 --frame-every 100 --run-name quick

Writes outputs/gan_curve_painter/<run-name>/: config.json, metrics.json (fraction of 1,000
generated curves entirely within the bounds with tolerance 0.05, fraction of points within the
bounds, mean/std of each curve's least-squares a and its KS statistic against U(1, 2), mean D on
real and generated paintings), log.jsonl, frames/step_XXXXXXX.png (generated paintings against
the bounds every --frame-every steps), training.gif (those frames animated), final.png,
losses.png, paintings.npy ((1000, 15) curves from the final generator) and checkpoint.pt.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import stats
from tqdm import tqdm

A_LOW, A_HIGH = 1.0, 2.0  # real paintings: a ~ U(1, 2)

# At the tutorial's lr 1e-4 the band's edges are still being sharpened when 10,000 steps end
# (about 93% of curves inside; 40,000 steps reach 98%). Six times the LR gets there within the
# default steps, but only with little or no first-moment momentum: with torch's default betas
# the nets overshoot and the spread of the fitted a collapses. Betas (0, 0.9) are the setting
# of WGAN-GP (Gulrajani et al. 2017) and SAGAN (Zhang et al. 2019). Measurements: README.
OPTIMIZER_PRESETS = {
    "ours": {"lr_g": 6e-4, "lr_d": 6e-4, "adam_betas": (0.0, 0.9)},
    "tutorial": {"lr_g": 1e-4, "lr_d": 1e-4, "adam_betas": (0.9, 0.999)},
}


# ----------------------------------------------------------------------------- config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-ideas", type=int, default=5, help="generator input (noise) size")
    p.add_argument("--points", type=int, default=15, help="points per painting, x in [-1, 1]")
    p.add_argument("--hidden", type=int, default=128)
    # why the presets differ: see OPTIMIZER_PRESETS
    p.add_argument(
        "--preset",
        choices=sorted(OPTIMIZER_PRESETS),
        default="ours",
        help="optimizer defaults: ours = Adam lr 6e-4, betas 0 0.9; tutorial = Adam lr 1e-4, "
        "betas 0.9 0.999 (the flags below override either)",
    )
    p.add_argument("--lr-g", type=float, default=None, help="default: from --preset")
    p.add_argument("--lr-d", type=float, default=None, help="default: from --preset")
    p.add_argument(
        "--adam-betas",
        type=float,
        nargs=2,
        default=None,
        metavar=("B1", "B2"),
        help="Adam betas for both nets; default: from --preset",
    )
    p.add_argument(
        "--g-loss",
        default="minimax",
        choices=("minimax", "nonsaturating"),
        help="minimax: min log(1 - D(G(z))); nonsaturating: min -log D(G(z))",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=0.999,
        help="decay of the generator weight average used for evaluation; 0 = raw G",
    )
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--frame-every", type=int, default=200, help="steps between GIF frames")
    p.add_argument("--eval-curves", type=int, default=1000)
    p.add_argument("--tolerance", type=float, default=0.05, help="slack on the bounds")
    p.add_argument("--checkpoint-every", type=int, default=2000)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; the nets are tiny, more threads only add overhead",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default="data", help="unused: the paintings are synthetic")
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
        "steps",
        "batch_size",
        "n_ideas",
        "hidden",
        "log_every",
        "frame_every",
        "eval_curves",
        "checkpoint_every",
        "threads",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.points < 3:
        parser.error("--points must be >= 3 (a parabola needs three points)")
    for key, value in OPTIMIZER_PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.adam_betas = tuple(args.adam_betas)
    if args.lr_g <= 0 or args.lr_d <= 0:
        parser.error("learning rates must be > 0")
    if not all(0 <= b < 1 for b in args.adam_betas):
        parser.error("--adam-betas must both be in [0, 1)")
    if not 0 <= args.ema < 1:
        parser.error("--ema must be in [0, 1)")
    if args.tolerance < 0:
        parser.error("--tolerance must be >= 0")
    if args.resume and not Path(args.resume).is_file():
        parser.error(f"--resume: no such file {args.resume}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available (use --device auto/cpu)")
    return args


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


def paint_points(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, n, device=device)


def lower_bound(x: torch.Tensor) -> torch.Tensor:
    return x**2  # a = 1


def upper_bound(x: torch.Tensor) -> torch.Tensor:
    return 2 * x**2 + 1  # a = 2


def artist_works(batch: int, x: torch.Tensor) -> torch.Tensor:
    """Real paintings a x^2 + (a - 1), a ~ U(1, 2), sampled on x's device: (batch, len(x))."""
    a = torch.empty(batch, 1, device=x.device).uniform_(A_LOW, A_HIGH)
    return a * x**2 + (a - 1)


# ----------------------------------------------------------------------------- models


def make_generator(n_ideas: int, hidden: int, points: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_ideas, hidden), nn.ReLU(), nn.Linear(hidden, points))


def make_discriminator(points: int, hidden: int) -> nn.Sequential:
    # Outputs a logit; D(x) = sigmoid(logit) is applied inside the losses (stable log-sigmoid).
    return nn.Sequential(nn.Linear(points, hidden), nn.ReLU(), nn.Linear(hidden, 1))


# ----------------------------------------------------------------------------- losses
# With D = sigmoid(l): log D = -softplus(-l), log(1 - D) = -softplus(l), exact and finite.


def d_loss(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    """Negative of Eq. 1's D objective: -[mean log D(x) + mean log(1 - D(G(z)))]."""
    return F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean()


def g_loss(fake_logit: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "minimax":
        return -F.softplus(fake_logit).mean()  # mean log(1 - D(G(z))), Eq. 1
    if kind == "nonsaturating":
        return F.softplus(-fake_logit).mean()  # mean -log D(G(z)), Sec. 3
    raise ValueError(f"unknown generator loss {kind!r}")


# ----------------------------------------------------------------------------- evaluation


def fit_a(curves: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Least-squares a for y = a x^2 + (a - 1) = a (x^2 + 1) - 1, per curve (closed form)."""
    basis = x**2 + 1
    return (np.asarray(curves) + 1) @ basis / (basis @ basis)


def within_bounds(curves: np.ndarray, x: np.ndarray, tol: float) -> np.ndarray:
    """Boolean (n_curves, n_points): point lies in [x^2 - tol, 2 x^2 + 1 + tol]."""
    curves = np.asarray(curves)
    return (curves >= x**2 - tol) & (curves <= 2 * x**2 + 1 + tol)


def curve_metrics(curves: np.ndarray, x: np.ndarray, tol: float) -> dict[str, float]:
    inside = within_bounds(curves, x, tol)
    a = fit_a(curves, x)
    residual = curves - (a[:, None] * (x**2 + 1) - 1)
    return {
        "curves_within_bounds": float(inside.all(axis=1).mean()),
        "points_within_bounds": float(inside.mean()),
        "a_mean": float(a.mean()),
        "a_std": float(a.std()),
        "a_ks_vs_uniform": float(
            stats.kstest(a, "uniform", args=(A_LOW, A_HIGH - A_LOW)).statistic
        ),
        # where the generated a leaks out of [1, 2] (0 and 0 for real paintings)
        "a_share_below_1": float((a < A_LOW).mean()),
        "a_share_above_2": float((a > A_HIGH).mean()),
        # how far the paintings are from the parabola family at all (0 for real paintings)
        "fit_residual_rms": float(np.sqrt(np.mean(residual**2))),
    }


D_PROBE_A = (0.8, 0.9, 1.0, 1.5, 2.0, 2.1, 2.2)


@torch.no_grad()
def evaluate(
    G: nn.Module, D: nn.Module, args, x: torch.Tensor
) -> tuple[dict[str, float], np.ndarray]:
    device = x.device
    curves = G(torch.randn(args.eval_curves, args.n_ideas, device=device))
    real = artist_works(args.eval_curves, x)
    metrics = curve_metrics(curves.cpu().numpy(), x.cpu().numpy(), args.tolerance)
    metrics["d_real"] = torch.sigmoid(D(real)).mean().item()
    metrics["d_fake"] = torch.sigmoid(D(curves)).mean().item()
    # D along the parabola family a (x^2 + 1) - 1, inside and outside [1, 2]: shows whether D
    # still tells the out-of-bounds paintings from the real ones at the end of training.
    a_probe = torch.tensor(D_PROBE_A, device=device)[:, None]
    d_probe = torch.sigmoid(D(a_probe * (x**2 + 1) - 1))[:, 0].tolist()
    metrics["d_on_family"] = {f"{a:.2f}": d for a, d in zip(D_PROBE_A, d_probe, strict=True)}
    return metrics, curves.cpu().numpy()


# ----------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_bounds(ax, x: np.ndarray) -> None:
    ax.plot(x, 2 * x**2 + 1, c="#74BCFF", lw=3, label="upper bound 2x²+1")
    ax.plot(x, x**2, c="#FF9359", lw=3, label="lower bound x²")
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-0.6, 3.6)


def save_frame(curves: np.ndarray, x: np.ndarray, step: int, d_real: float, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.6, 2.8))
    _draw_bounds(ax, x)
    for c in curves:
        ax.plot(x, c, c="#4AD631", lw=1.5, alpha=0.8)
    ax.set_title(f"step {step}   D(real) {d_real:.2f}", fontsize=9)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def write_gif(frame_paths: list[Path], path: Path, ms_per_frame: int = 120) -> None:
    from PIL import Image

    if not frame_paths:
        return
    # A shared 64-colour palette keeps the GIF small (the frames are flat line art).
    frames = [Image.open(p).convert("RGB").quantize(64) for p in frame_paths]
    tmp = path.with_name(path.name + ".tmp")
    frames[0].save(
        tmp,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=ms_per_frame,
        loop=0,
        optimize=True,
    )
    os.replace(tmp, path)


def plot_final(curves: np.ndarray, x: np.ndarray, metrics: dict, path: Path, title: str) -> None:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    _draw_bounds(ax1, x)
    for c in curves[:100]:
        ax1.plot(x, c, c="#4AD631", lw=0.7, alpha=0.4)
    ax1.legend(loc="upper center", fontsize=7)
    ax1.set_title(
        f"100 generated paintings; {100 * metrics['curves_within_bounds']:.1f}% of "
        f"{len(curves)} entirely within bounds",
        fontsize=9,
    )
    a = fit_a(curves, x)
    ax2.hist(
        a,
        bins=40,
        range=(0.5, 2.5),
        density=True,
        color="#4AD631",
        alpha=0.7,
        label="fitted a, generated",
    )
    ax2.plot([0.5, 1, 1, 2, 2, 2.5], [0, 0, 1, 1, 0, 0], "k", lw=1.2, label="U(1, 2)")
    ax2.set_title(
        f"a: mean {metrics['a_mean']:.3f} std {metrics['a_std']:.3f} "
        f"KS {metrics['a_ks_vs_uniform']:.3f}",
        fontsize=9,
    )
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_losses(history: list[dict], path: Path) -> None:
    plt = _plt()
    if not history:
        return
    steps = [h["step"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
    ax1.plot(steps, [h["d_loss"] for h in history], label="D loss")
    ax1.plot(steps, [h["g_loss"] for h in history], label="G loss")
    ax2.plot(steps, [h["d_real"] for h in history], label="mean D(real)")
    ax2.plot(steps, [h["d_fake"] for h in history], label="mean D(G(z))")
    ax2.axhline(0.5, color="k", ls="--", lw=0.8)
    for ax in (ax1, ax2):
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    run_dir = (
        Path(args.resume).resolve().parent
        if args.resume
        else Path(args.out) / Path(__file__).stem / args.run_name
    )
    frames_dir = run_dir / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)

    x = paint_points(args.points, device)
    x_np = x.cpu().numpy()
    G = make_generator(args.n_ideas, args.hidden, args.points).to(device)
    D = make_discriminator(args.points, args.hidden).to(device)
    G_avg = copy.deepcopy(G).requires_grad_(False)  # EMA of G's weights, used for evaluation
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=args.adam_betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=args.adam_betas)
    z_frames = torch.randn(5, args.n_ideas, device=device)  # the same 5 ideas in every frame
    step, history = 0, []
    if args.resume:
        ckpt = torch.load(args.resume, map_location=device, weights_only=False)
        for module, key in (
            (G, "G"),
            (D, "D"),
            (G_avg, "G_avg"),
            (opt_g, "opt_g"),
            (opt_d, "opt_d"),
        ):
            module.load_state_dict(ckpt[key])
        step, history, z_frames = ckpt["step"], ckpt["history"], ckpt["z_frames"].to(device)
        set_rng_state(ckpt["rng"])
        print(f"resumed {args.resume} at step {step}")
    G_eval = G_avg if args.ema > 0 else G

    config = {
        **vars(args),
        "run_dir": str(run_dir),
        "device_used": str(device),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "evaluated_generator": "ema" if args.ema > 0 else "raw",
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))

    @torch.no_grad()
    def frame(at_step: int) -> None:
        d_real = torch.sigmoid(D(artist_works(256, x))).mean().item()
        save_frame(
            G_eval(z_frames).cpu().numpy(),
            x_np,
            at_step,
            d_real,
            frames_dir / f"step_{at_step:07d}.png",
        )

    def checkpoint() -> None:
        save_checkpoint(
            run_dir / "checkpoint.pt",
            {
                "step": step,
                "G": G.state_dict(),
                "D": D.state_dict(),
                "G_avg": G_avg.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "history": history,
                "z_frames": z_frames.cpu(),
                "rng": rng_state(),
                "args": vars(args),
            },
        )

    if step == 0:
        frame(0)
    tty = sys.stderr.isatty()
    # Interval sums stay on the device: no host sync per step, only per log line.
    sums = torch.zeros(4, device=device)
    t0 = time.perf_counter()
    with open(run_dir / "log.jsonl", "a") as log:
        bar = tqdm(total=args.steps, initial=step, disable=not tty, desc="painter")
        while step < args.steps:
            real = artist_works(args.batch_size, x)
            fake = G(torch.randn(args.batch_size, args.n_ideas, device=device))
            # D step (Eq. 1) on detached fakes: G's graph stays intact for its own step below.
            real_logit, fake_logit = D(real), D(fake.detach())
            loss_d = d_loss(real_logit, fake_logit)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            # G step against the updated D. D's weights are frozen for this backward only;
            # nothing was modified in place that G's graph needs, so no retain_graph.
            D.requires_grad_(False)
            loss_g = g_loss(D(fake), args.g_loss)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            D.requires_grad_(True)
            if args.ema > 0:
                with torch.no_grad():
                    for p_avg, p in zip(G_avg.parameters(), G.parameters(), strict=True):
                        p_avg.lerp_(p, 1 - args.ema)
            step += 1
            bar.update(1)
            sums += torch.stack(
                [
                    loss_d.detach(),
                    loss_g.detach(),
                    torch.sigmoid(real_logit.detach()).mean(),
                    torch.sigmoid(fake_logit.detach()).mean(),
                ]
            )
            if step % args.log_every == 0 or step == args.steps:
                n = args.log_every if step % args.log_every == 0 else step % args.log_every
                d_l, g_l, d_r, d_f = (sums / n).tolist()
                sums.zero_()
                row = {
                    "step": step,
                    "d_loss": d_l,
                    "g_loss": g_l,
                    "d_real": d_r,
                    "d_fake": d_f,
                    "seconds": round(time.perf_counter() - t0, 2),
                }
                history.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
                msg = f"D loss {d_l:.3f} G loss {g_l:.3f} D(real) {d_r:.3f} D(G(z)) {d_f:.3f}"
                if tty:
                    bar.set_postfix_str(msg)
                elif step % (10 * args.log_every) == 0 or step == args.steps:
                    print(f"step {step}/{args.steps}: {msg}", flush=True)
            if step % args.frame_every == 0 or step == args.steps:
                frame(step)
            if step % args.checkpoint_every == 0 or step == args.steps:
                checkpoint()
        bar.close()
    train_seconds = time.perf_counter() - t0

    metrics, curves = evaluate(G_eval, D, args, x)
    raw_metrics, _ = evaluate(G, D, args, x)
    metrics.update(
        steps=args.steps,
        g_loss=args.g_loss,
        evaluated_generator=config["evaluated_generator"],
        train_seconds=round(train_seconds, 2),
        raw_generator={
            k: raw_metrics[k]
            for k in ("curves_within_bounds", "a_mean", "a_std", "a_ks_vs_uniform")
        },
    )
    np.save(run_dir / "paintings.npy", curves.astype(np.float32))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    frame_paths = sorted(frames_dir.glob("step_*.png"))
    write_gif(frame_paths, run_dir / "training.gif")
    title = f"gan_curve_painter, {args.g_loss} G loss, seed {args.seed}, step {args.steps}"
    plot_final(curves, x_np, metrics, run_dir / "final.png", title)
    plot_losses(history, run_dir / "losses.png")
    print(
        f"done in {train_seconds:.1f}s: {100 * metrics['curves_within_bounds']:.1f}% curves within "
        f"bounds, a mean {metrics['a_mean']:.3f} std {metrics['a_std']:.3f} "
        f"KS {metrics['a_ks_vs_uniform']:.3f}, D(real) {metrics['d_real']:.3f} -> {run_dir}",
        flush=True,
    )


if __name__ == "__main__":
    main()
