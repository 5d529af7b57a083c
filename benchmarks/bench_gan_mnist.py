"""Training speed of gan_mnist.py's loop vs. the source notes' torchvision input pipeline.

Both pipelines feed the same models (the `notes` preset) through the same update step
(`gan_mnist.train_step`: one D update, one G update, EMA) at batch 64 on the same device:

  tensor      gan_mnist.py: MNIST train held in one float tensor, batches drawn by index;
  dataloader  torchvision.datasets.MNIST + transforms.ToTensor() + DataLoader(batch_size=64,
              shuffle=True, num_workers=0): a PIL image and a ToTensor call per sample.

The two are timed in alternating rounds in one process (so background load hits both alike),
and the data-only time per batch of each pipeline is measured too. Prints and writes JSON.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gan_mnist as gm  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=Path("data"))
    p.add_argument("--steps", type=int, default=300, help="timed training steps per round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per pipeline")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (gan_mnist.py's default)"
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

    g = gm.build_generator(preset).to(device)
    d = gm.build_discriminator(preset).to(device)
    kw = dict(lr=cfg["lr"], betas=cfg["betas"], weight_decay=cfg["weight_decay"])
    g_opt, d_opt = torch.optim.Adam(g.parameters(), **kw), torch.optim.Adam(d.parameters(), **kw)
    ema = gm.copy.deepcopy(g).requires_grad_(False)
    sources = {"tensor": tensor_batches(), "dataloader": loader_batches()}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def time_training(source, steps: int) -> float:
        sync()
        t0 = time.perf_counter()
        for step in range(steps):
            real = next(source)
            stats = gm.train_step(
                g, d, g_opt, d_opt, [real], cfg["latent_dim"], ema=ema, ema_decay=0.999, step=step
            )
        stats["d_loss"].item()
        sync()
        return time.perf_counter() - t0

    def time_data_only(source, steps: int) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            next(source).sum()
        sync()
        return time.perf_counter() - t0

    for source in sources.values():  # warm-up: first batches, allocator, kernels
        time_training(source, 20)
    train_s = {name: 0.0 for name in sources}
    data_s = {name: 0.0 for name in sources}
    for r in range(args.rounds):
        for name, source in sources.items():
            train_s[name] += time_training(source, args.steps)
            data_s[name] += time_data_only(source, args.steps)
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n} {train_s[n]:.1f} s" for n in sources),
            flush=True,
        )

    total = args.steps * args.rounds
    result = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "batch_size": batch,
        "preset": preset,
        "timed_steps_per_pipeline": total,
        "steps_per_s": {n: total / train_s[n] for n in sources},
        "data_ms_per_batch": {n: 1000 * data_s[n] / total for n in sources},
        "speedup_tensor_over_dataloader": train_s["dataloader"] / train_s["tensor"],
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    print(json.dumps(result, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
