"""Training speed of gan_mnist.py vs. the source notes' way of training the same models.

All pipelines train the `notes` preset's G and D at batch 64 on the same device; they are timed
in alternating rounds in one process (so background load hits all alike):

  script      gan_mnist.py as it trains: MNIST in one float tensor, batches drawn by index,
              `gan_mnist.train_step` (D scores real and fake in one pass, EMA of G, the
              preset's lazy R1 penalty on D every 4th step, in the script's default
              --r1-pass), fused Adam
              where available, and the script's --precision (bfloat16 autocast on CPUs with
              native bf16 when it is `auto`);
  tensor      the same tensor batches and `train_step`, but float32 and torch.optim.Adam's
              default implementation: isolates what the data path alone is worth;
  notes       the notes' loop: torchvision.datasets.MNIST + transforms.ToTensor() +
              DataLoader(batch_size=64, shuffle=True, num_workers=0) (a PIL image and a
              ToTensor call per sample), torch.optim.Adam, float32, G updated first with the L1
              term, then D on separate real and fake passes (BCE), as written in the notes.

The headline is steps/s of `script` over `notes`; `tensor` over `notes` is the data path's share.
The data-only time per batch of the two input pipelines is measured too. Prints and writes JSON.

Command:  python benchmarks/bench_gan_mnist.py            (~3 min on a 2-core CPU)
Quick:    python benchmarks/bench_gan_mnist.py --steps 50 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gan_mnist as gm  # noqa: E402

R1_EVERY = gm.build_parser().get_default("r1_every")  # the script's lazy-R1 interval
R1_SHARED = gm.build_parser().get_default("r1_pass") == "shared"


def notes_step(g, d, g_opt, d_opt, real, latent_dim: int) -> torch.Tensor:
    """One iteration of the notes' training loop (G first, then D), on logits for stability."""
    z = torch.randn(real.shape[0], latent_dim, device=real.device)
    fake = g(z)
    g_opt.zero_grad()
    recon = (fake - real).abs().mean()
    g_loss = 0.05 * recon + F.softplus(-d(fake)).mean()
    g_loss.backward()
    g_opt.step()
    d_opt.zero_grad()
    d_loss = F.softplus(-d(real)).mean() + F.softplus(d(fake.detach())).mean()
    d_loss.backward()
    d_opt.step()
    return d_loss.detach()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=Path("data"))
    p.add_argument("--steps", type=int, default=300, help="timed training steps per round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per pipeline")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (gan_mnist.py's default)"
    )
    p.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16"],
        default=gm.build_parser().get_default("precision"),
        help="the script pipeline's --precision (default: gan_mnist.py's default)",
    )
    p.add_argument("--json", type=Path, default=Path("outputs/benchmarks/bench_gan_mnist.json"))
    args = p.parse_args()
    if args.steps < 1 or args.rounds < 1:
        p.error("--steps and --rounds must be >= 1")

    from torchvision import datasets, transforms

    device = gm.pick_device(args.device)
    torch.set_num_threads(args.threads)
    batch, preset = 64, "notes"
    cfg = gm.PRESETS[preset]
    autocast_dtype = gm.resolve_precision(args.precision, device)
    torch.manual_seed(0)

    mnist = gm.load_mnist(args.data_root)  # exits with a clear message when MNIST is missing
    train_x = gm.images_to_tensor(mnist["train_images"], device)

    def tensor_batches():
        while True:
            perm = torch.randperm(len(train_x), device=device)
            for i in range(len(train_x) // batch):
                yield train_x[perm[i * batch : (i + 1) * batch]]

    dataset = datasets.MNIST(
        str(args.data_root), train=True, download=False, transform=transforms.ToTensor()
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=0, drop_last=True
    )

    def loader_batches():
        while True:
            for images, _ in loader:
                yield images.reshape(images.shape[0], -1).to(device)

    def models(script_optimizer: bool):
        g = gm.build_generator(preset).to(device)
        d = gm.build_discriminator(preset).to(device)
        if script_optimizer:
            return g, d, gm.make_adam(g, cfg), gm.make_adam(d, cfg)
        kw = dict(lr=cfg["lr"], betas=cfg["betas"], weight_decay=cfg["weight_decay"])
        return g, d, torch.optim.Adam(g.parameters(), **kw), torch.optim.Adam(d.parameters(), **kw)

    def script_like(nets, precision):
        g, d, g_opt, d_opt = nets
        ema = gm.copy.deepcopy(g).requires_grad_(False)

        def step(real, i):
            return gm.train_step(
                g, d, g_opt, d_opt, [real], cfg["latent_dim"], recon_weight=cfg["recon_weight"],
                ema=ema, ema_decay=0.999, step=i, autocast_dtype=precision,
                r1_gamma=cfg["r1_gamma"], r1_every=R1_EVERY, r1_fused=R1_SHARED,
            )["d_loss"]  # fmt: skip

        return step

    def notes_like(nets):
        def step(real, i):
            return notes_step(*nets, real, cfg["latent_dim"])

        return step

    script_nets = models(True)
    pipelines = {
        "script": (script_like(script_nets, autocast_dtype), tensor_batches()),
        "tensor": (script_like(models(False), None), tensor_batches()),
        "notes": (notes_like(models(False)), loader_batches()),
    }

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def time_training(step_fn, source, steps: int) -> float:
        sync()
        t0 = time.perf_counter()
        for i in range(steps):
            loss = step_fn(next(source), i)
        loss.item()
        sync()
        return time.perf_counter() - t0

    def time_data_only(source, steps: int) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            next(source).sum()
        sync()
        return time.perf_counter() - t0

    for step_fn, source in pipelines.values():  # warm-up: first batches, allocator, kernels
        time_training(step_fn, source, 20)
    train_s = {name: 0.0 for name in pipelines}
    data_s = {name: 0.0 for name in ("tensor", "notes")}
    for r in range(args.rounds):
        for name, (step_fn, source) in pipelines.items():
            train_s[name] += time_training(step_fn, source, args.steps)
            if name in data_s:
                data_s[name] += time_data_only(source, args.steps)
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n} {train_s[n]:.1f} s" for n in pipelines),
            flush=True,
        )

    total = args.steps * args.rounds
    result = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "batch_size": batch,
        "preset": preset,
        "script_autocast_dtype": str(autocast_dtype) if autocast_dtype else "float32",
        "script_r1_pass": "shared" if R1_SHARED else "separate",
        "script_adam_fused": bool(script_nets[2].param_groups[0].get("fused")),
        "timed_steps_per_pipeline": total,
        "steps_per_s": {n: total / train_s[n] for n in pipelines},
        "data_ms_per_batch": {
            "tensor": 1000 * data_s["tensor"] / total,
            "dataloader_totensor": 1000 * data_s["notes"] / total,
        },
        "speedup_script_over_notes": train_s["notes"] / train_s["script"],
        "speedup_tensor_data_path_only": train_s["notes"] / train_s["tensor"],
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    print(json.dumps(result, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
