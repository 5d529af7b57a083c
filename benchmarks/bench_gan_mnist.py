"""gan_mnist.py's default recipe over seeds -> results/gan_mnist_default.json; and its training
speed against the study notes' loop.

Quality (the default): runs `python gan_mnist.py --seed S` for each seed, one after the other,
reads each run's metrics.json and (re)writes results/gan_mnist_default.json after every seed,
keeping the rows of seeds measured earlier (so seeds can be added a few at a time). Targets:
end-of-run IS >= 9 and every digit >= 5 % of the samples, with the built-in evaluation.

    python benchmarks/bench_gan_mnist.py --seeds 100 101 102 103 104   # ~10 min a seed, 1 core
    python benchmarks/bench_gan_mnist.py --seeds 100 --extra --epochs 1 --eval-samples 2000  # quick

Speed: `--speed` times gan_mnist.train_step on tensor batches against the notes' loop
(torchvision MNIST + ToTensor + DataLoader, plain Adam, float32, G step then D step on separate
passes), in alternating rounds in one process, and prints steps/s and their ratio.

    python benchmarks/bench_gan_mnist.py --speed            # ~3 min on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import gan_mnist as gm  # noqa: E402
from results import REPO_ROOT, RESULTS_DIR, write_results  # noqa: E402

NAME = "gan_mnist_default"
METRICS = {
    "is": "IS (DRS, end)",
    "fid": "FID (DRS, end)",
    "min_digit_pct": "smallest digit share, %",
    "is_g": "IS (G alone)",
    "fid_g": "FID (G alone)",
    "wall_min": "wall time, min",
}
TARGETS = {"is": [">=", 9.0], "min_digit_pct": [">=", 5.0]}


def quality(args: argparse.Namespace) -> None:
    path = RESULTS_DIR / f"{NAME}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    runs = [r for r in old.get("runs", []) if r["seed"] not in args.seeds]
    command = "python gan_mnist.py --seed {seed}" + "".join(f" {a}" for a in args.extra)
    for seed in args.seeds:
        name = f"bench_s{seed}"
        cmd = [sys.executable, str(REPO_ROOT / "gan_mnist.py"), "--seed", str(seed), "--run-name",
               name, "--out", str(args.out), "--threads", "1", "--overwrite", *args.extra]  # fmt: skip
        print(" ".join(cmd), flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        m = json.loads((args.out / "gan_mnist" / name / "metrics.json").read_text())
        final = m["final"]
        runs.append({"seed": seed, "is": final["is"], "fid": final["fid"],
                     "min_digit_pct": 100 * final["min_digit_fraction"],
                     "is_g": final["g_alone"]["is"], "fid_g": final["g_alone"]["fid"],
                     "wall_min": (time.time() - t0) / 60,
                     "drs_acceptance": final.get("drs_acceptance"),
                     "digit_fractions": final["digit_fractions"]})  # fmt: skip
        carried = [r for r in runs if r.get("carried_over")]
        note = old.get("note", "") if carried else ""
        written = write_results(NAME, "gan_mnist.py", command, METRICS, runs, TARGETS, note)
        print(f"seed {seed}: IS {final['is']:.2f}, FID {final['fid']:.1f}; wrote {written}")


def notes_step(g, d, g_opt, d_opt, real, latent_dim: int) -> torch.Tensor:
    """One iteration of the notes' loop (G first, then D), on logits for stability."""
    fake = g(torch.randn(real.shape[0], latent_dim))
    g_opt.zero_grad()
    (0.05 * (fake - real).abs().mean() + F.softplus(-d(fake)).mean()).backward()
    g_opt.step()
    d_opt.zero_grad()
    d_loss = F.softplus(-d(real)).mean() + F.softplus(d(fake.detach())).mean()
    d_loss.backward()
    d_opt.step()
    return d_loss.detach()


def speed(args: argparse.Namespace) -> None:
    from torchvision import datasets, transforms

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg, batch = gm.PRESETS["recipe"], 64
    x = gm.images_to_tensor(gm.load_mnist(args.data_root)["train_images"], torch.device("cpu"))

    def tensor_batches():
        while True:
            perm = torch.randperm(len(x))
            for i in range(len(x) // batch):
                yield x[perm[i * batch : (i + 1) * batch]]

    dataset = datasets.MNIST(str(args.data_root), train=True, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True)

    def loader_batches():
        while True:
            for images, _ in loader:
                yield images.reshape(len(images), -1)

    g, d = gm.build_generator("notes", 96), gm.build_discriminator("notes")
    nets = gm.Nets(g, d, gm.make_adam(g, cfg), gm.make_adam(d, cfg), gm.copy.deepcopy(g))
    sc = gm.StepConfig(96, "nonsaturating", cfg["recon_weight"], cfg["r1_gamma"], gm.R1_EVERY,
                       cfg["ema_decay"], gm.autocast_dtype(torch.device("cpu")))  # fmt: skip
    g2, d2 = gm.build_generator("notes", 96), gm.build_discriminator("notes")
    kw = dict(lr=cfg["lr"], betas=cfg["betas"], weight_decay=cfg["weight_decay"])
    notes_opts = (torch.optim.Adam(g2.parameters(), **kw), torch.optim.Adam(d2.parameters(), **kw))
    pipelines = {
        "script": (lambda real, i: gm.train_step(nets, [real], i, sc)["d_loss"], tensor_batches()),
        "notes": (lambda real, i: notes_step(g2, d2, *notes_opts, real, 96), loader_batches()),
    }
    seconds = dict.fromkeys(pipelines, 0.0)
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, (step, source) in pipelines.items():
            t0 = time.perf_counter()
            for i in range(args.steps):
                loss = step(next(source), i)
            loss.item()
            if r > 0:
                seconds[name] += time.perf_counter() - t0
    rate = {n: args.steps * args.rounds / s for n, s in seconds.items()}
    print(f"steps/s: script {rate['script']:.1f}, notes' loop {rate['notes']:.1f}; "
          f"ratio {rate['script'] / rate['notes']:.2f}x")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103, 104])
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="further gan_mnist.py flags (they change the recorded command)")  # fmt: skip
    p.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "bench")
    p.add_argument("--speed", action="store_true", help="time the training step instead")
    p.add_argument("--data-root", type=Path, default=REPO_ROOT / "data")
    p.add_argument("--steps", type=int, default=300, help="--speed: timed steps per round")
    p.add_argument("--rounds", type=int, default=2, help="--speed: alternating rounds")
    args = p.parse_args()
    speed(args) if args.speed else quality(args)


if __name__ == "__main__":
    main()
