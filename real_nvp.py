"""Real NVP normalizing flow: exact log-likelihood (bits/dim) on MNIST and 2-D toy densities.

Paper: L. Dinh, J. Sohl-Dickstein, S. Bengio, "Density estimation using Real NVP", ICLR 2017
(arXiv:1605.08803). Equation numbers in the comments refer to that paper.

- Images (`--dataset mnist`, the default; `cifar10` when its files are in --data-root): the
  multi-scale Real NVP of Sec. 3.6 on dequantised, logit-transformed pixels; exact train/test
  bits/dim, samples at temperature 1.0 and 0.7, reconstructions x -> z -> x and the latent
  manifold of eq. 19.
- 2-D toys (`--dataset moons|8gaussians|checkerboard`): Real NVP with MLP couplings on
  fresh samples of the generator; test NLL in nats next to the generator's entropy, the density,
  samples and the learned map of a grid (the paper's Figure 1).
- Multi-process: `torchrun --nproc_per_node N real_nvp.py ...` trains with
  DistributedDataParallel (NCCL on GPUs, gloo on CPUs). --batch-size is the global batch; rank 0
  writes the run folder.

Commands
  full (MNIST, 10 epochs, 0.67M parameters; about 100 min on a 2-core CPU with bf16 support):
      python real_nvp.py
  quick (about a minute):
      python real_nvp.py --epochs 1 --steps 20 --channels 8 --res-blocks 1 --test-limit 500
  toys (4000 steps, 2-4 CPU minutes each; `--steps 300` for a quick look):
      python real_nvp.py --dataset moons
  the paper's CIFAR-10 configuration, as the study notes give it:
      python real_nvp.py --preset notes
  sample from a trained run (writes samples_n64_t0.7.npy beside the checkpoint):
      python real_nvp.py --generate 64 --temperature 0.7 --checkpoint outputs/real_nvp/RUN/checkpoint.pt

Writes outputs/real_nvp/<run-name>/: config.json, metrics.json, log.jsonl, checkpoint.pt and PNGs
(images: samples_t1.0.png, samples_t0.7.png, reconstructions.png, manifold.png, bpd_curve.png;
toys: density.png, grid_map.png, nll_curve.png).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import random
import shutil
import struct
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

# ==================================================================== common block: begin
# Identical in every script of the collection (tests/test_common_block.py checks it).
# Contract: usage mistakes exit 2, data/runtime failures exit 1, each with one line on stderr
# naming the flag or file; a run writes only into OUT/<script>/<run-name>/, which exists only
# once the run has really started; checkpoints are atomic and name the script that wrote them.
SCRIPT = Path(__file__).stem
EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
# The run folder this process made: run_cli removes it if the run stops before a checkpoint.
NEW_RUN_DIR: list[Path] = []


class UsageError(Exception):
    """A mistake on the command line (a flag, a --resume file): exit 2."""


class RunError(Exception):
    """A data or runtime failure (a missing or malformed dataset, a diverged run): exit 1."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each flag's default shown once, after its help; flags whose default is None say in their
    own help what they fall back to."""

    def _get_help_string(self, action):
        text = action.help or ""
        hidden = action.default is None or action.default is False  # `0 in (None, False)`
        if not hidden and action.default is not argparse.SUPPRESS and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors become UsageError: one line on stderr, exit 2, no usage dump."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        raise UsageError(message)


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The flags that mean the same in every script."""
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to train; auto takes CUDA when present")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of every random number generator")
    p.add_argument("--data-root", type=Path, default=Path("data"), help="folder with the datasets")
    p.add_argument("--out", type=Path, default=Path("outputs"),
                   help="runs are written to OUT/<script>/<run-name>/")  # fmt: skip
    p.add_argument("--run-name", default=None,
                   help="name of the run folder (default: the start time, YYYYmmdd-HHMMSS)")  # fmt: skip
    p.add_argument("--resume", type=Path, default=None, metavar="CHECKPOINT",
                   help="continue the run that wrote this checkpoint.pt, in its own folder")  # fmt: skip
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run folder of the same --run-name")  # fmt: skip
    # One thread measured fastest for these models on a 2-core machine that does anything else.
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch; 0: torch's own")


def check_common_args(args: argparse.Namespace) -> None:
    if args.threads < 0:
        raise UsageError("--threads must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available here (use --device auto or cpu)")
    if args.resume is not None and args.overwrite:
        raise UsageError("--resume continues a run; it cannot be combined with --overwrite")
    if args.resume is not None and not args.resume.is_file():
        raise UsageError(f"--resume: no such file {args.resume}")
    if args.resume is not None and args.run_name is not None:
        raise UsageError("--resume continues a run in its checkpoint's folder; drop --run-name")
    name = args.run_name
    if name is not None and (not name or name in (".", "..") or "/" in name or "\\" in name):
        raise UsageError(f"--run-name {name!r}: use a plain folder name")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_run_dir(args: argparse.Namespace) -> Path:
    """The run's folder: the checkpoint's own with --resume, else OUT/<script>/<run-name>. A used
    name is refused unless --overwrite. Nothing is created here: see open_run_dir."""
    if args.resume is not None:
        return args.resume.resolve().parent
    if args.run_name is None:
        args.run_name = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.out / SCRIPT / args.run_name
    if run_dir.exists() and any(run_dir.iterdir()) and not args.overwrite:
        raise UsageError(
            f"--run-name {args.run_name}: {run_dir} already holds a run "
            "(--resume its checkpoint.pt to continue it, or --overwrite to replace it)"
        )
    return run_dir


def open_run_dir(run_dir: Path, config: dict, *, resume: bool, overwrite: bool) -> None:
    """Create the run folder once data and model are ready (so a failed start leaves none) and
    write config.json: one flat object of plain values."""
    for key, value in config.items():
        if isinstance(value, tuple):
            config[key] = value = list(value)
        if isinstance(value, Path):
            config[key] = value = str(value)
        ok = value is None or isinstance(value, (str, int, float, bool))
        ok = ok or (
            isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value)
        )
        if not ok:
            raise TypeError(f"config.json must stay flat: {key} is {type(value).__name__}")
    try:
        if overwrite and not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        if not resume:
            NEW_RUN_DIR.append(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", config)
    except OSError as exc:
        raise RunError(f"cannot write the run folder {run_dir} ({exc.strerror or exc})") from None


def write_json(path: Path, obj) -> None:
    """Atomic: readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def save_checkpoint(path: Path, state: dict, *, version: int) -> None:
    """Atomic (write, fsync, rename): a kill at any moment leaves the previous checkpoint whole.
    Records the script and its checkpoint version, every RNG state and the size of log.jsonl,
    so that --resume can drop what was logged after it."""
    tmp, log = path.with_name(path.name + ".tmp"), path.with_name("log.jsonl")
    log_bytes = log.stat().st_size if log.is_file() else 0
    meta = {"script": SCRIPT, "version": version, "rng": rng_state(), "log_bytes": log_bytes}
    with open(tmp, "wb") as f:
        torch.save({**meta, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, *, version: int, flag: str = "--resume") -> dict:
    """A checkpoint of this script and version, or a UsageError naming the file. With --resume,
    log.jsonl beside it is cut back to its size at that checkpoint: the run replays the rest and
    logs it again."""
    if not Path(path).is_file():
        raise UsageError(f"{flag}: no such file {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torn, truncated or not a torch file at all
        raise UsageError(
            f"{flag}: {path} is not a readable checkpoint ({type(exc).__name__})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("script") != SCRIPT:
        writer = ckpt.get("script") if isinstance(ckpt, dict) else None
        raise UsageError(
            f"{flag}: {path} was written by {writer or 'something else'}, not {SCRIPT}"
        )
    if ckpt.get("version") != version:
        raise UsageError(
            f"{flag}: {path} has checkpoint version {ckpt.get('version')}; "
            f"this {SCRIPT}.py reads version {version}"
        )
    log, keep = Path(path).with_name("log.jsonl"), ckpt.get("log_bytes")
    if flag == "--resume" and keep is not None and log.is_file() and log.stat().st_size > keep:
        os.truncate(log, keep)
    return ckpt


def require_files(root: Path, files: list[str], how: str) -> None:
    """RunError naming the first missing dataset file and how to get it. Explains the common
    trap: `ln -s /somewhere/MNIST data/MNIST` into an existing folder makes data/MNIST/MNIST."""
    for rel in files:
        path = root / rel
        if path.is_file():
            continue
        top = root / Path(rel).parts[0]
        nested = top / Path(rel).parts[0]
        if nested.exists():
            raise RunError(
                f"{path} is missing but {nested} exists: the link was made inside an existing "
                f"folder; remove {top} and link again"
            )
        raise RunError(f"{path} is missing; {how}")


def remove_empty_dirs(path: Path, stop: Path) -> None:
    """Undo the folders a failed download made, up to (not including) `stop`."""
    path, stop = path.resolve(), stop.resolve()
    while path != stop and stop in path.parents and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent


class Progress:
    """tqdm on a terminal; elsewhere (cron, logs, CI) a plain line at most every `every_s`."""

    def __init__(self, total: int, initial: int = 0, desc: str = SCRIPT, every_s: float = 30.0):
        self.total, self.n, self.desc, self.every_s = total, initial, desc, every_s
        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=desc) if self.tty else None
        self.last_print = time.monotonic()

    def update(self, n: int = 1, msg: str = "") -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            if msg:
                self.bar.set_postfix_str(msg, refresh=False)
        elif time.monotonic() - self.last_print >= self.every_s or self.n >= self.total:
            self.last_print = time.monotonic()
            print(f"{self.desc} {self.n}/{self.total} {msg}".rstrip(), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_cli(main, argv: list[str] | None = None) -> int:
    """main(argv) with the exit-code contract: 0 done, 1 RunError, 2 UsageError, 130 Ctrl-C. A
    run stopped before its first checkpoint leaves no folder behind."""
    try:
        main(argv)
    except UsageError as exc:
        print(f"{SCRIPT}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RunError, KeyboardInterrupt) as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        message = "interrupted" if interrupted else f"error: {exc}"
        for run_dir in NEW_RUN_DIR:
            if not (run_dir / "checkpoint.pt").is_file():
                shutil.rmtree(run_dir, ignore_errors=True)
            elif interrupted:
                message += f"; continue with --resume {run_dir / 'checkpoint.pt'}"
        print(f"{SCRIPT}: {message}", file=sys.stderr)
        return EXIT_INTERRUPTED if interrupted else EXIT_RUNTIME
    return 0


# ==================================================================== common block: end

# -------------------------------------------------------------------------------------- config
CKPT_VERSION = 2
IMAGE_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
# Squeezes (Sec. 3.6): 28 -> 14 -> 7 on MNIST; one on CIFAR-10, as in the paper's CIFAR model.
NUM_SCALES = {"mnist": 2, "cifar10": 1}
TOY_DATASETS = ("moons", "8gaussians", "checkerboard")  # each with an exact log-density
LOG2 = math.log(2.0)
L2_SCALE = 5e-5  # L2 on the weight-norm and coupling scales (Sec. 4.1)
CLIP = 100.0  # gradient-norm clip: only catches rare spikes, the paper has none
LOG_EVERY = 100  # image runs: a train_bpd row and a checkpoint every 100 steps
BN_BATCHES = 50  # training batches that re-estimate batch-norm statistics before an evaluation
EVAL_BATCH = 500
TOY_COUPLINGS, TOY_HIDDEN, TOY_TEST_SIZE = 8, 256, 20_000
# The study notes carry the paper's CIFAR-10 setup (Sec. 4.1): 8 residual blocks, 64 feature
# maps, one squeeze, batch norm, batch 64, Adam with default settings, L2 5e-5.
PRESETS = {
    "notes": {"dataset": "cifar10", "channels": 64, "res_blocks": 8, "norm": "batch",
              "batch_size": 64},
}  # fmt: skip
# Resuming takes the run's own configuration from its checkpoint; only these may be changed.
RESUME_OVERRIDES = ("device", "threads", "data_root", "epochs", "steps")
# Flags of one invocation, never part of a run's configuration.
NOT_CONFIG = ("given", "resume", "overwrite", "generate", "checkpoint", "temperature")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__)
    add_common_args(p)
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="notes: the paper's CIFAR-10 model (--dataset cifar10 --channels 64 "
                   "--res-blocks 8 --norm batch); flags given beside it win")  # fmt: skip
    p.add_argument("--dataset", choices=[*IMAGE_SHAPES, *TOY_DATASETS],
                   help="mnist (default), cifar10, or a 2-D toy")  # fmt: skip
    p.add_argument("--epochs", type=int, help="image datasets: passes over the data (default: 10)")
    p.add_argument("--steps", type=int,
                   help="stop after this many optimizer steps (toys: default 4000; images: "
                   "default no cap)")  # fmt: skip
    p.add_argument("--batch-size", type=int,
                   help="global batch, split over torchrun processes (default: images 64, "
                   "toys 512)")  # fmt: skip
    p.add_argument("--lr", type=float, default=1e-3,
                   help="Adam learning rate, decayed to 0 by a cosine over the planned steps")  # fmt: skip
    p.add_argument("--channels", type=int,
                   help="feature maps of the s/t ResNets (default: 32; notes preset 64)")  # fmt: skip
    p.add_argument("--res-blocks", type=int,
                   help="residual blocks per s/t ResNet (default: 2; notes preset 8)")  # fmt: skip
    p.add_argument("--norm", choices=["act", "batch", "none"],
                   help="normalisation after each coupling: act (ActNorm), batch (the paper's "
                   "batch norm, eq. 17-18) or none (default: act; notes preset batch)")  # fmt: skip
    p.add_argument("--st-dtype", default="auto", choices=["auto", "float32"],
                   help="precision of the image s/t nets (the flow maths stays float32); auto: "
                   "bfloat16 where the hardware has it natively")  # fmt: skip
    p.add_argument("--logit-alpha", type=float,
                   help="a in logit(a + (1-2a) x) (default: mnist 1e-6, cifar10 0.05)")  # fmt: skip
    p.add_argument("--test-limit", type=int, default=0,
                   help="score only the first N test images; 0: all")  # fmt: skip
    p.add_argument("--generate", type=int, metavar="N",
                   help="only sample N items from --checkpoint, written beside it as .npy")  # fmt: skip
    p.add_argument("--checkpoint", type=Path, help="the checkpoint.pt that --generate samples")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="--generate: prior std T, z ~ N(0, T^2 I)")  # fmt: skip
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser.parse_args(argv)
    typed = {a.split("=", 1)[0] for a in argv if a.startswith("--")}  # what --resume checks
    args.given = {a.dest for a in parser._actions if typed & set(a.option_strings)}
    check_common_args(args)
    for key, value in PRESETS.get(args.preset, {}).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    fill_defaults(args)
    for flag in ("epochs", "steps", "generate", "batch_size", "channels", "res_blocks"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.lr <= 0:
        raise UsageError("--lr must be > 0")
    if not 0.0 < args.logit_alpha < 0.5:
        raise UsageError("--logit-alpha must be in (0, 0.5)")
    if args.test_limit < 0 or args.temperature <= 0:
        raise UsageError("--test-limit must be >= 0 and --temperature > 0")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.batch_size % world:
        raise UsageError(f"--batch-size {args.batch_size} must divide over {world} processes")
    if args.batch_size // world < 2 and args.norm == "batch":
        raise UsageError("--norm batch needs at least 2 samples per process (--batch-size)")
    if args.generate is not None:
        if args.checkpoint is None or args.resume is not None or world > 1:
            raise UsageError("--generate N needs --checkpoint, no --resume, one process")
    elif args.checkpoint is not None:
        raise UsageError("--checkpoint is only read by --generate N")
    return args


def fill_defaults(args: argparse.Namespace) -> None:
    """Defaults that depend on the dataset (None = not given and no preset set it)."""
    args.dataset = args.dataset or "mnist"
    toy = args.dataset in TOY_DATASETS
    defaults = {"epochs": 10, "batch_size": 512 if toy else 64, "channels": 32, "res_blocks": 2,
                "num_scales": NUM_SCALES.get(args.dataset, 0), "norm": "act",
                "steps": 4000 if toy else None,
                # 1e-6 as the later MNIST flow papers (0.05 trained far slower there), 0.05 on
                # CIFAR-10 as the paper's code
                "logit_alpha": 1e-6 if args.dataset == "mnist" else 0.05}  # fmt: skip
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def config_of(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in NOT_CONFIG}


def resume_args(args: argparse.Namespace, ckpt: dict) -> argparse.Namespace:
    """The checkpoint's own configuration, with the few flags a resume may change."""
    keep = (*NOT_CONFIG, "out")
    saved = {k: v for k, v in ckpt["config"].items() if k not in keep}
    for key in RESUME_OVERRIDES:
        if key in args.given:
            saved[key] = getattr(args, key)
    saved["data_root"] = Path(saved["data_root"])
    return argparse.Namespace(**saved, **{k: getattr(args, k) for k in keep})


class Dist:
    """What the training loop needs to know about torchrun: rank, world size, all-reduce."""

    def __init__(self, device_name: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled, self.is_main = self.world > 1, self.rank == 0
        self.device = pick_device(device_name)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        if self.enabled:  # NCCL on GPUs; gloo runs the same code on CPUs (used by the tests)
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")

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


def step_generator(seed: int, rank: int, step: int, device) -> torch.Generator:
    """The randomness of one training step (dequantisation noise, toy samples) as a pure function
    of (seed, rank, step): a resumed run draws exactly what the uninterrupted run drew, and no
    process needs its generator state in rank 0's checkpoint."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 64 + rank)


# ---------------------------------------------------------------------------------------- data
MNIST_FILES = ["MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/t10k-images-idx3-ubyte"]
CIFAR_FILES = [f"cifar-10-batches-py/{b}" for b in [*(f"data_batch_{i}" for i in range(1, 6)),
                                                    "test_batch"]]  # fmt: skip


def load_image_data(name: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) uint8 tensors (N, C, H, W). Missing files are downloaded with torchvision
    when the internet answers; otherwise a RunError names the first missing file."""
    files = MNIST_FILES if name == "mnist" else CIFAR_FILES
    if not all((root / f).is_file() for f in files):
        stop = root if root.is_dir() else root.parent  # leave no folder the download made
        try:
            import torchvision

            cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.CIFAR10
            for train in (True, False):
                cls(str(root), train=train, download=True)
        except Exception:  # noqa: BLE001 - offline, mirror down: say which file is missing
            pass
        finally:
            remove_empty_dirs(root / Path(files[0]).parent, stop)
    require_files(root, files, f"put the {name} files there (or run once with internet)")
    if name == "mnist":
        return read_idx_images(root / files[0]), read_idx_images(root / files[1])
    arrays = []
    for f in files:  # python-pickle batches: b"data" holds uint8 rows of 3 x 32 x 32 (CHW)
        try:
            with open(root / f, "rb") as fh:
                arrays.append(np.asarray(pickle.load(fh, encoding="bytes")[b"data"], np.uint8))
        except Exception as exc:  # noqa: BLE001 - truncated or foreign file
            raise RunError(f"{root / f}: not a CIFAR-10 batch ({type(exc).__name__})") from None
    train, test = np.concatenate(arrays[:5]), arrays[5]
    return (torch.from_numpy(train.reshape(-1, 3, 32, 32)),
            torch.from_numpy(test.reshape(-1, 3, 32, 32)))  # fmt: skip


def read_idx_images(path: Path) -> torch.Tensor:
    """An MNIST idx3 image file, checked against its own header (magic 2051, 28 x 28, size)."""
    raw = path.read_bytes()
    magic, n, h, w = struct.unpack(">IIII", raw[:16]) if len(raw) >= 16 else (0, 0, 0, 0)
    if magic != 2051 or (h, w) != (28, 28) or len(raw) != 16 + n * h * w:
        raise RunError(f"{path}: not an MNIST image file ({len(raw)} bytes; truncated?)")
    return torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).view(n, 1, h, w)


def sample_toy(name: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """Draw n points from the 2-D toy generators used across the flow literature (FFJORD)."""
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
        # Unit-circle centres scaled by 4 (well separated, entropy ~2.83 nats; with a scale of 2
        # neighbouring components overlap and the entropy is ~2.52).
        k = torch.randint(0, 8, (n,), generator=g).float() * (math.pi / 4)
        centres = 4.0 * torch.stack([torch.cos(k), torch.sin(k)], 1)
        return (centres + 0.5 * torch.randn(n, 2, generator=g)) / 1.414
    if name == "checkerboard":
        x1 = torch.rand(n, generator=g) * 4 - 2
        x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g).float() * 2
        x2 = x2 + torch.floor(x1) % 2
        return torch.stack([x1, x2], 1) * 2
    raise ValueError(f"unknown toy dataset {name}")


def toy_log_density(name: str, x: torch.Tensor) -> torch.Tensor:
    """Exact log-density of the toy generator, in float64."""
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
    x1, x2 = x[:, 0] / 2, x[:, 1] / 2  # checkerboard: uniform on 8 squares of side 2
    inside = (x1 >= -2) & (x1 < 2) & (x2 >= -2) & (x2 < 2)
    inside &= ((torch.floor(x1) + torch.floor(x2)) % 2) == 0
    return torch.where(inside, -math.log(32.0), -math.inf)


def toy_entropy(name: str, n: int = 50_000, seed: int = 12345) -> tuple[float, float]:
    """Monte Carlo entropy H = E[-log p(x)] of the generator and its standard error."""
    if name == "checkerboard":  # uniform on 8 squares of side 2: exact
        return math.log(32.0), 0.0
    logp = toy_log_density(name, sample_toy(name, n, torch.Generator().manual_seed(seed)))
    return float(-logp.mean()), float(logp.std() / math.sqrt(n))


# Preprocessing (Sec. 4.1): dequantisation and the logit transform, with their log-det.
def dequantize(x_uint8: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
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


# --------------------------------------------------------------------------------------- model
# Flow layers map forward (data -> latent) returning (y, log|det dy/dx|) per sample, and have an
# exact inverse.
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
        self.st_bf16 = False  # see "speed" at the end of this section

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


def coupling_and_norm(mask, net, norm: str, scale_init: float = 1.0) -> list[nn.Module]:
    """A coupling, then the --norm layer on its output (none: the coupling alone)."""
    layers: list[nn.Module] = [AffineCoupling(mask, net, scale_init)]
    if norm != "none":
        norm_layer = FlowBatchNorm if norm == "batch" else ActNorm
        layers.append(norm_layer(mask.shape[1], mask.dim()))
    return layers


# s/t networks: weight-normalised ResNets with batch norm inside (Sec. 3.6 / 4.1) for images, a
# ReLU MLP for 2-D points. The last layer starts at zero, so each coupling starts as the identity.
def wn_conv(c_in: int, c_out: int, k: int) -> nn.Module:
    return weight_norm(nn.Conv2d(c_in, c_out, k, padding=k // 2))


def zeroed(layer: nn.Module) -> nn.Module:
    """No weight norm on the zero layer: its g/||v|| is undefined for v = 0."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


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
    """s and t of a convolutional coupling: raw_s and t for every input channel."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, blocks: int):
        super().__init__()
        self.inp = wn_conv(c_in, c_mid, 3)
        self.blocks = nn.Sequential(*(ResidualBlock(c_mid) for _ in range(blocks)))
        last = zeroed(nn.Conv2d(c_mid, c_out, 3, padding=1))
        self.head = nn.Sequential(nn.BatchNorm2d(c_mid), nn.ReLU(), last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.inp(x)))


class MLPST(nn.Module):
    """s and t of a coupling on 2-D points."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        last = zeroed(nn.Linear(hidden, d_out))
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), last
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RealNVP(nn.Module):
    """Multi-scale Real NVP (Sec. 3.6). forward(x) -> (z, log|det|) with z the concatenation of
    the variables factored out at every scale (eq. 13-16); inverse(z) -> x."""

    def __init__(self, in_shape, num_scales=2, channels=32, res_blocks=2, norm="act"):
        super().__init__()
        c, h, w = in_shape
        self.num_dims = c * h * w
        self.levels = nn.ModuleList()
        self.z_shapes: list[tuple[int, int, int]] = []

        # Sec. 3.6 doubles the feature maps as the resolution halves; here every scale has the
        # same width: doubling cost 1.6x per epoch on MNIST and scored no better.
        def coupling(mask: torch.Tensor) -> list[nn.Module]:
            k = mask.shape[1]
            return coupling_and_norm(mask, ResNetST(2 * k, channels, 2 * k, res_blocks), norm)

        for _ in range(num_scales):
            layers: list[nn.Module] = []
            for parity in (0, 1, 0):  # alternate so every unit gets transformed (Sec. 3.5)
                layers += coupling(checkerboard_mask(c, h, w, parity))
            layers.append(Squeeze())
            c, h, w = 4 * c, h // 2, w // 2
            for parity in (0, 1, 0):
                layers += coupling(channel_mask(c, h, w, parity))
            self.levels.append(FlowSequence(layers))
            self.z_shapes.append((c // 2, h, w))  # half the dimensions are factored out (eq. 14)
            c //= 2
        last: list[nn.Module] = []
        for parity in (0, 1, 0, 1):  # the final scale: 4 checkerboard couplings (eq. 15)
            last += coupling(checkerboard_mask(c, h, w, parity))
        self.final = FlowSequence(last)
        self.z_shapes.append((c, h, w))

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

    def __init__(self, couplings=8, hidden=256, norm="act", scale_init=1.0):
        super().__init__()
        layers: list[nn.Module] = []
        for k in range(couplings):
            mask = torch.tensor([[1.0, 0.0]] if k % 2 == 0 else [[0.0, 1.0]])
            layers += coupling_and_norm(mask, MLPST(4, hidden, 4), norm, scale_init)
        self.flow = FlowSequence(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.flow(x)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return self.flow.inverse(z)


def build_model(args: argparse.Namespace) -> nn.Module:
    if args.dataset in TOY_DATASETS:
        return ToyRealNVP(TOY_COUPLINGS, TOY_HIDDEN, args.norm)
    model = RealNVP(IMAGE_SHAPES[args.dataset], args.num_scales, args.channels, args.res_blocks,
                    args.norm)  # fmt: skip
    set_st_bf16(model, st_uses_bf16(args))
    return model


# Speed: --st-dtype auto runs only the s/t networks under bfloat16 autocast where the hardware
# has it natively (about 2x faster convs on CPUs with AVX512-BF16 and on GPUs). The coupling
# arithmetic, log-dets and prior stay in float32, and the inverse recomputes the same s, t from
# the same masked input, so the flow is still exactly invertible with an exact log-det.
def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def st_uses_bf16(args) -> bool:
    """Emulated bf16 (no native support) would be slower than float32."""
    if args.dataset in TOY_DATASETS or args.st_dtype == "float32":
        return False
    kind = pick_device(args.device).type
    return torch.cuda.is_bf16_supported() if kind == "cuda" else cpu_has_native_bf16()


def set_st_bf16(model: nn.Module, enabled: bool) -> None:
    for m in model.modules():
        if isinstance(m, AffineCoupling):
            m.st_bf16 = enabled


# ----------------------------------------------------------------------------------- loss/eval
def bits_per_dim(log_p_xtilde: torch.Tensor, num_dims: int) -> torch.Tensor:
    """bpd = [-log p(x~) + D log 256] / (D ln 2), where log p(x~) = log N(z) + log|det J_flow|
    + log|det J_preprocess| (eq. 3). The D log 256 converts the density on [0,1)^D back to the
    0..255 pixel scale, so a model uniform on [0,1)^D scores exactly 8 bits/dim."""
    return (-log_p_xtilde + num_dims * math.log(256.0)) / (num_dims * LOG2)


def log_prob(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Change of variables, eq. 3: log p_X(x) = log p_Z(f(x)) + log|det df/dx|."""
    z, logdet = model(x)
    return -0.5 * (z.pow(2) + math.log(2 * math.pi)).flatten(1).sum(1) + logdet


def image_log_prob(model: nn.Module, x_tilde: torch.Tensor, alpha: float) -> torch.Tensor:
    """log p(x~) on [0,1)^D: flow log-likelihood of y = logit(...) plus the preprocessing log-det."""
    y, logdet_pre = logit_transform(x_tilde, alpha)
    return log_prob(model, y) + logdet_pre


def scale_l2(model: nn.Module) -> torch.Tensor:
    """L2 on the scale parameters (Sec. 4.1): the weight-norm magnitudes g and the couplings'
    tanh scales."""
    terms = [
        p.pow(2).sum()
        for name, p in model.named_parameters()
        if name.endswith("parametrizations.weight.original0") or name.endswith(".scale")
    ]
    return torch.stack(terms).sum()


@torch.no_grad()
def recompute_batchnorm_stats(model: nn.Module, batches) -> None:
    """Re-estimate every batch-norm running statistic (flow-level FlowBatchNorm and the BN inside
    the s/t nets) as a plain average over `batches` with the current weights, so evaluation does
    not use the stale exponential averages collected while the weights were moving."""
    kinds = (FlowBatchNorm, nn.modules.batchnorm._BatchNorm)
    bns = [m for m in model.modules() if isinstance(m, kinds)]
    if not bns:
        return
    was_training = model.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x in batches:
        model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.train(was_training)


def check_finite(loss: torch.Tensor, step: int, ctx: Dist | None = None) -> None:
    """Stop with a clear message at the first non-finite loss (all processes agree, so none is
    left waiting in an all-reduce)."""
    bad = 0.0 if torch.isfinite(loss).all() else 1.0
    if ctx is not None:
        bad = ctx.sum([bad])[0]
    if bad:
        raise RunError(f"non-finite loss ({float(loss):.4g}) at step {step}; try a lower --lr")


@torch.no_grad()
def evaluate_images(model, data_u8, alpha: float, ctx: Dist) -> float:
    """Mean test bits/dim with a fixed dequantisation noise; each process scores a shard."""
    model.eval()
    idx = torch.arange(ctx.rank, len(data_u8), ctx.world, device=data_u8.device)
    g = torch.Generator(device=data_u8.device).manual_seed(1234 + ctx.rank)
    total = 0.0
    for chunk in idx.split(EVAL_BATCH):
        bpd = bits_per_dim(image_log_prob(model, dequantize(data_u8[chunk], g), alpha),
                           model.num_dims)  # fmt: skip
        total += float(bpd.double().sum())
    total, count = ctx.sum([total, float(len(idx))])
    model.train()
    return total / count


@torch.no_grad()
def sample_images(model, n: int, temperature: float, alpha: float, g: torch.Generator):
    """z ~ N(0, T^2 I) -> x = g(z) -> pixel values in [0, 1] (uint8 levels / 255)."""
    model.eval()
    z = torch.randn(n, model.num_dims, generator=g, device=g.device) * temperature
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


def save_figure(fig, path: Path) -> None:
    """Every PNG of a run goes through here (the tests check titles and axis labels)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def subplots(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def image_grid_figure(images: torch.Tensor, nrow: int, path: Path, title: str, xlabel: str,
                      ylabel: str) -> None:  # fmt: skip
    """A grid of images (N, C, H, W in [0, 1]) with 2 white pixels between them."""
    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + 2) + 2, nrow * (w + 2) + 2)
    for k, img in enumerate(images):
        r, q = divmod(k, nrow)
        grid[:, 2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + q * (w + 2) : 2 + q * (w + 2) + w] = img
    fig, ax = subplots(figsize=(0.75 * nrow + 1, 0.75 * rows + 1))
    ax.imshow(grid.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    save_figure(fig, path)


@torch.no_grad()
def image_figures(model, test_u8, args, run_dir: Path, done: str) -> dict:
    g = torch.Generator(device=test_u8.device).manual_seed(args.seed + 99)
    alpha = args.logit_alpha
    model.eval()
    for t in (1.0, 0.7):
        image_grid_figure(sample_images(model, 64, t, alpha, g), 8, run_dir / f"samples_t{t}.png",
                          f"Real NVP samples, z ~ N(0, {t}² I), {args.dataset} ({done})",
                          "64 samples, 8 per row", "8 rows")  # fmt: skip
    x = dequantize(test_u8[:32], g)
    x_rec = inverse_logit(model.inverse(model(logit_transform(x, alpha)[0])[0]), alpha)
    err = float((x_rec - x).abs().max())
    image_grid_figure(torch.cat([x, x_rec.clamp(0, 1)]).cpu(), 8, run_dir / "reconstructions.png",
                      f"Reconstruction g(f(x)); max |error| {err:.1e} (pixel scale 0-1)",
                      "32 test images, 8 per row", "top 4 rows: data x; bottom 4: g(f(x))")  # fmt: skip
    z4, _ = model(logit_transform(dequantize(test_u8[:4], g), alpha)[0])
    x_man = inverse_logit(model.inverse(manifold_latents(z4)), alpha)
    image_grid_figure(x_man.clamp(0, 1).cpu(), 10, run_dir / "manifold.png",
                      "Latent manifold (eq. 19) of 4 test images at the corners",
                      "phi' from 0 to pi/2 (rad)", "phi from 0 to pi/2 (rad)")  # fmt: skip
    model.train()
    return {"reconstruction_max_abs_error": err}


def curve_figure(rows: list[dict], x: tuple[str, str, float], series: dict, path: Path, title: str,
                 ylabel: str, hline: tuple[float, str] | None = None) -> None:  # fmt: skip
    """series: log key -> legend label; x: (log key, axis label, divisor)."""
    fig, ax = subplots(figsize=(6, 4))
    for key, label in series.items():
        pts = [(r[x[0]] / x[2], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=label)
    if hline is not None:
        ax.axhline(hline[0], color="grey", ls="--", label=hline[1])
    ax.set(xlabel=x[1], ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


@torch.no_grad()
def toy_figures(model, args, device, run_dir: Path) -> None:
    """Model and true density, and the paper's Figure 1: x ~ data -> z = f(x) (inference) and
    z ~ N(0, I) -> x = g(z) (generation), with the images of straight grid lines of each space
    drawn in the other."""
    model.eval()
    lim, n = 4.0, 300
    g1 = torch.linspace(-lim, lim, n)
    xx, yy = torch.meshgrid(g1, g1, indexing="xy")
    grid = torch.stack([xx.flatten(), yy.flatten()], 1).to(device)
    dens = torch.cat([log_prob(model, c).exp() for c in grid.split(10000)]).reshape(n, n).cpu()
    true_dens = toy_log_density(args.dataset, grid.cpu()).exp().reshape(n, n)
    fig, axes = subplots(1, 2, figsize=(10, 5))
    for ax, img, title in zip(axes, (dens, true_dens), ("Real NVP", f"true {args.dataset}")):
        im = ax.imshow(img.numpy(), extent=(-lim, lim, -lim, lim), origin="lower", cmap="magma")
        fig.colorbar(im, ax=ax, fraction=0.046, label="density")
        ax.set(title=f"{title} density", xlabel="x1", ylabel="x2")
    save_figure(fig, run_dir / "density.png")

    g = torch.Generator().manual_seed(args.seed + 7)
    data = sample_toy(args.dataset, 5000, g)
    z_prior = torch.randn(5000, 2, generator=g)
    x_gen = model.inverse(z_prior.to(device)).cpu()
    t = torch.linspace(-lim, lim, 200)
    lines = [torch.stack([torch.full_like(t, v), t], 1) for v in torch.linspace(-3, 3, 13)]
    lines += [torch.stack([t, torch.full_like(t, v)], 1) for v in torch.linspace(-3, 3, 13)]
    fwd = [model(ln.to(device))[0].cpu() for ln in lines]
    inv = [model.inverse(ln.to(device)).cpu() for ln in lines]
    z_data = model(data.to(device))[0].cpu()
    fig, axes = subplots(2, 2, figsize=(9, 9))
    specs = [(axes[0, 0], data, lines, "X: data x", "x"), (axes[0, 1], z_data, fwd, "Z: z = f(x)", "z"),
             (axes[1, 1], z_prior, lines, "Z: z ~ N(0, I)", "z"),
             (axes[1, 0], x_gen, inv, "X: x = g(z)", "x")]  # fmt: skip
    for ax, pts, lns, title, v in specs:
        for ln in lns:
            ax.plot(ln[:, 0].numpy(), ln[:, 1].numpy(), lw=0.5, color="grey", alpha=0.6)
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=1, alpha=0.4, color="C1")
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), title=title, xlabel=f"{v}1", ylabel=f"{v}2",
               aspect="equal")  # fmt: skip
    fig.suptitle(f"Real NVP on {args.dataset}: the learned map with grid lines (paper Fig. 1)")
    save_figure(fig, run_dir / "grid_map.png")
    model.train()


# --------------------------------------------------------------------------------------- train
class RunLog:
    """log.jsonl and progress lines; silent on ranks other than 0 (run_dir None)."""

    def __init__(self, run_dir: Path | None, rows: int):
        self.run_dir, self.rows = run_dir, rows

    def log(self, row: dict) -> None:
        if self.run_dir is not None:
            append_jsonl(self.run_dir / "log.jsonl", row)
            self.rows += 1

    def say(self, msg: str) -> None:
        if self.run_dir is not None:
            tqdm.write(msg) if sys.stderr.isatty() else print(msg, flush=True)

    def read(self) -> list[dict]:
        return [json.loads(line) for line in (self.run_dir / "log.jsonl").read_text().splitlines()]


def setup(args, ctx: Dist, run_dir: Path | None, ckpt: dict | None, first_batch):
    """Model and Adam (restored when resuming), and the run folder (rank 0) with log.jsonl cut
    back to the rows the checkpoint had seen: a killed run may have logged past it. A fresh run
    initialises ActNorm from the data of `first_batch()`. DDP broadcasts rank 0's parameters and
    buffers, so every process starts identical."""
    model = build_model(args).to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    rows = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        rows = ckpt["log_rows"]
    if run_dir is not None:
        config = {**config_of(args), "world_size": ctx.world, "device_used": str(ctx.device),
                  "torch_threads": torch.get_num_threads()}  # fmt: skip
        open_run_dir(run_dir, config, resume=ckpt is not None, overwrite=args.overwrite)
        path = run_dir / "log.jsonl"
        kept = path.read_text().splitlines(keepends=True)[:rows] if path.exists() else []
        path.write_text("".join(kept))
    if ckpt is None and args.norm == "act":
        with torch.no_grad():
            model(first_batch())
    ddp_model = model
    if ctx.enabled:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model, ddp_model, optimizer, RunLog(run_dir, rows)


def checkpoint(args, log: RunLog, model, optimizer, **state) -> None:
    if log.run_dir is not None:  # rank 0 only; every process holds the same weights
        save_checkpoint(log.run_dir / "checkpoint.pt",
                        {"config": config_of(args), "model": model.state_dict(),
                         "optimizer": optimizer.state_dict(), "log_rows": log.rows, **state},
                        version=CKPT_VERSION)  # fmt: skip


def train_step(model, optimizer, loss_data, args, step: int, total: int, ctx: Dist) -> float:
    """One Adam step (default betas, Sec. 4.1) at the cosine LR of `step`, decaying to 0."""
    check_finite(loss_data, step, ctx)
    for group in optimizer.param_groups:
        group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / total))
    loss = loss_data + L2_SCALE * scale_l2(model)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    optimizer.step()
    return float(loss_data.detach())


def train_images(args, ctx: Dist, run_dir: Path | None, ckpt: dict | None) -> dict:
    device, alpha = ctx.device, args.logit_alpha
    train_u8, test_u8 = load_image_data(args.dataset, args.data_root)
    test_u8 = test_u8[: args.test_limit or None]
    train_u8, test_u8 = train_u8.to(device), test_u8.to(device)
    batch, per_rank = args.batch_size, args.batch_size // ctx.world
    spe = len(train_u8) // batch  # steps per epoch; the last partial batch is dropped
    if spe < 1:
        raise RunError(f"{args.data_root}: {len(train_u8)} training images < --batch-size {batch}")
    total = args.epochs * spe if args.steps is None else min(args.epochs * spe, args.steps)

    def first_batch() -> torch.Tensor:
        g = step_generator(args.seed, ctx.rank, -1, device)
        first = train_u8[torch.randperm(len(train_u8), generator=g, device=device)[:per_rank]]
        return logit_transform(dequantize(first, g), alpha)[0]

    model, ddp_model, optimizer, log = setup(args, ctx, run_dir, ckpt, first_batch)
    st = ckpt or {"step": 0, "epoch_sum": 0.0, "epoch_n": 0, "elapsed_s": 0.0}
    step, epoch_sum, epoch_n = st["step"], st["epoch_sum"], st["epoch_n"]

    def bn_batches():
        g = torch.Generator(device=device).manual_seed(args.seed + 777 + ctx.rank)
        for _ in range(min(BN_BATCHES, spe)):
            idx = torch.randint(0, len(train_u8), (per_rank,), device=device, generator=g)
            yield logit_transform(dequantize(train_u8[idx], g), alpha)[0]

    def evaluate() -> float:
        recompute_batchnorm_stats(model, bn_batches())
        if ctx.enabled:
            for name, buf in model.named_buffers():  # average the re-estimates over processes
                if buf.is_floating_point() and "running" in name:
                    dist.all_reduce(buf)
                    buf /= ctx.world
        return evaluate_images(model, test_u8, alpha, ctx)

    def save() -> None:
        checkpoint(args, log, model, optimizer, step=step, epoch_sum=epoch_sum, epoch_n=epoch_n,
                   elapsed_s=time.time() - t0, test_bpd=test_bpd, train_bpd=train_bpd)  # fmt: skip

    n_params = sum(p.numel() for p in model.parameters())
    log.say(f"{SCRIPT} {args.dataset}: {n_params / 1e6:.2f}M params, {ctx.world} process(es) on "
            f"{device}, {spe} steps/epoch of {batch}, {total} steps planned")  # fmt: skip
    t0 = time.time() - st["elapsed_s"]
    t_train, images, window, window_n = 0.0, 0, 0.0, 0
    test_bpd, train_bpd = st.get("test_bpd"), st.get("train_bpd")
    bar = Progress(total, step) if ctx.is_main and step < total else None
    while step < total:
        epoch, first_i = divmod(step, spe)
        if first_i == 0:
            epoch_sum, epoch_n = 0.0, 0
        # The epoch's order depends on (seed, epoch) only; rank r takes every world-th image of
        # each global batch, so N processes see the one-process run's batches.
        order = torch.randperm(len(train_u8), generator=torch.Generator().manual_seed(
            args.seed * 1_000_003 + epoch)).to(device)  # fmt: skip
        for i in range(first_i, spe):
            idx = order[i * batch : (i + 1) * batch][ctx.rank :: ctx.world]
            x = dequantize(train_u8[idx], step_generator(args.seed, ctx.rank, step, device))
            t_step = time.time()
            loss = bits_per_dim(image_log_prob(ddp_model, x, alpha), model.num_dims).mean()
            loss = train_step(model, optimizer, loss, args, step, total, ctx)
            t_train, images = t_train + time.time() - t_step, images + batch
            step, window, window_n = step + 1, window + loss, window_n + 1
            if bar is not None:
                bar.update(1, f"epoch {epoch + 1} bpd {loss:.3f}")
            if step % LOG_EVERY == 0 or step % spe == 0 or step == total:
                mean = ctx.sum([window])[0] / ctx.world  # summed over the window, rank mean
                epoch_sum, epoch_n = epoch_sum + mean, epoch_n + window_n
                log.log({"step": step, "epoch": step / spe, "train_bpd": mean / window_n,
                         "elapsed_s": time.time() - t0})  # fmt: skip
                window, window_n = 0.0, 0
                if step % spe and step < total:  # mid-epoch; the epoch's end saves below
                    save()
            if step == total:
                break
        train_bpd, test_bpd = epoch_sum / epoch_n, evaluate()
        log.log({"step": step, "epoch": step / spe, "train_bpd_epoch": train_bpd,
                 "test_bpd": test_bpd, "elapsed_s": time.time() - t0})  # fmt: skip
        log.say(f"epoch {step / spe:.2f}: train bpd {train_bpd:.4f}  test bpd {test_bpd:.4f}  "
                f"({(time.time() - t0) / 60:.1f} min)")  # fmt: skip
        save()
    if bar is not None:
        bar.close()
    metrics = {"dataset": args.dataset, "test_bpd": test_bpd, "train_bpd_last_epoch": train_bpd,
               "epochs": step / spe, "steps": step, "wall_time_s": time.time() - t0,
               "params": n_params, "train_images_per_s": images / t_train if t_train else None,
               "world_size": ctx.world,
               "st_dtype": "bfloat16" if st_uses_bf16(args) else "float32"}  # fmt: skip
    if run_dir is not None:
        metrics.update(image_figures(model, test_u8, args, run_dir, f"{step / spe:.2f} epochs"))
        curve_figure(log.read(), ("elapsed_s", "training time (min)", 60.0),
                     {"train_bpd": f"train (mean of {LOG_EVERY} steps)", "test_bpd": "test"},
                     run_dir / "bpd_curve.png", f"Real NVP on {args.dataset}", "bits/dim")  # fmt: skip
    return metrics


def train_toy(args, ctx: Dist, run_dir: Path | None, ckpt: dict | None) -> dict:
    device, total = ctx.device, args.steps
    per_rank = args.batch_size // ctx.world

    def first_batch() -> torch.Tensor:
        g = step_generator(args.seed, ctx.rank, -1, "cpu")
        return sample_toy(args.dataset, per_rank, g).to(device)

    model, ddp_model, optimizer, log = setup(args, ctx, run_dir, ckpt, first_batch)
    st = ckpt or {"step": 0, "elapsed_s": 0.0}
    step = st["step"]
    # A fixed test set from its own seed; the exact density of the generator on the same points
    # gives a paired estimate of KL(data || model) = NLL_model - NLL_true >= 0.
    test_x = sample_toy(args.dataset, TOY_TEST_SIZE, torch.Generator().manual_seed(99991))
    true_logp = toy_log_density(args.dataset, test_x)
    ent, ent_se = toy_entropy(args.dataset)
    test_x = test_x.to(device)

    @torch.no_grad()
    def test_logp() -> torch.Tensor:
        recompute_batchnorm_stats(model, (
            sample_toy(args.dataset, per_rank, torch.Generator().manual_seed(5 + k)).to(device)
            for k in range(BN_BATCHES)))  # fmt: skip
        model.eval()
        logp = torch.cat([log_prob(model, c) for c in test_x.split(EVAL_BATCH)])
        model.train()
        return logp

    def evaluate() -> tuple[float, float]:
        nll = -test_logp()
        return float(nll.mean()), float(nll.std() / math.sqrt(len(nll)))

    eval_every = max(total // 10, 1)
    t0 = time.time() - st["elapsed_s"]
    if step == 0:
        log.log({"step": 0, "test_nll": evaluate()[0], "elapsed_s": 0.0})
    ent_txt = f"entropy {ent:.4f} +- {ent_se:.4f} nats"
    log.say(f"{SCRIPT} {args.dataset}: {ent_txt}")
    test_nll, test_se = st.get("test_nll"), st.get("test_se")
    bar = Progress(total, step) if ctx.is_main and step < total else None
    while step < total:
        x = sample_toy(args.dataset, per_rank, step_generator(args.seed, ctx.rank, step, "cpu"))
        loss = train_step(model, optimizer, -log_prob(ddp_model, x.to(device)).mean(), args, step,
                          total, ctx)  # fmt: skip
        step += 1
        if bar is not None:
            bar.update(1, f"nll {loss:.3f}")
        if step % eval_every == 0 or step == total:
            test_nll, test_se = evaluate()
            log.log({"step": step, "train_nll": loss, "test_nll": test_nll,
                     "elapsed_s": time.time() - t0})  # fmt: skip
            checkpoint(args, log, model, optimizer, step=step, elapsed_s=time.time() - t0,
                       test_nll=test_nll, test_se=test_se)  # fmt: skip
    if bar is not None:
        bar.close()
    wall_time_s = time.time() - t0  # the KL estimate below is not training time
    diff = true_logp - test_logp().double().cpu()
    metrics = {"dataset": args.dataset, "test_nll": test_nll, "test_nll_se": test_se,
               "entropy": ent, "entropy_se": ent_se, "gap_to_entropy": test_nll - ent,
               "steps": step, "wall_time_s": wall_time_s,
               "params": sum(p.numel() for p in model.parameters()),
               "true_nll_on_test": float(-true_logp.mean()), "kl_estimate": float(diff.mean()),
               "kl_estimate_se": float(diff.std() / math.sqrt(len(diff)))}  # fmt: skip
    log.say(f"test NLL {test_nll:.4f} +- {test_se:.4f} nats/point; {ent_txt}")
    if run_dir is not None:
        toy_figures(model, args, device, run_dir)
        curve_figure(log.read(), ("step", "optimizer step", 1.0), {"test_nll": "Real NVP, test"},
                     run_dir / "nll_curve.png", f"Real NVP on {args.dataset}",
                     "test NLL (nats/point)", (ent, "entropy of the generator"))  # fmt: skip
    return metrics


# ---------------------------------------------------------------------------------------- main
@torch.no_grad()
def generate(args: argparse.Namespace) -> None:
    """--generate N --checkpoint PATH: N samples at --temperature, saved beside the checkpoint."""
    ckpt = load_checkpoint(args.checkpoint, version=CKPT_VERSION, flag="--checkpoint")
    saved = argparse.Namespace(**{**ckpt["config"], "device": args.device})
    device = pick_device(args.device)
    model = build_model(saved).to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    g = torch.Generator(device=device).manual_seed(args.seed)
    out = []
    for start in range(0, args.generate, 500):
        n = min(500, args.generate - start)
        if saved.dataset in TOY_DATASETS:
            z = torch.randn(n, 2, generator=g, device=device) * args.temperature
            out.append(model.inverse(z).cpu())
        else:
            imgs = sample_images(model, n, args.temperature, saved.logit_alpha, g)
            out.append((imgs * 255).round().to(torch.uint8))
    path = args.checkpoint.resolve().parent / f"samples_n{args.generate}_t{args.temperature}.npy"
    np.save(path, torch.cat(out).numpy())
    print(f"wrote {args.generate} samples (T={args.temperature}) to {path}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_threads(args.threads)
    if args.generate is not None:
        generate(args)
        return
    run_dir = resolve_run_dir(args)  # every process, before any of them creates anything
    ckpt = None
    if args.resume is not None:
        extra = sorted(args.given - {*RESUME_OVERRIDES, "resume", "out"})
        if extra:
            raise UsageError(f"--resume continues with the checkpoint's own configuration; "
                             f"--{extra[0].replace('_', '-')} cannot be changed")  # fmt: skip
        ckpt = load_checkpoint(args.resume, version=CKPT_VERSION)
        args = resume_args(args, ckpt)
    ctx = Dist(args.device)
    try:
        seed_everything(args.seed + ctx.rank)  # model initialisation; DDP then copies rank 0's
        if ckpt is not None:
            set_rng_state(ckpt["rng"])
        train = train_toy if args.dataset in TOY_DATASETS else train_images
        metrics = train(args, ctx, run_dir if ctx.is_main else None, ckpt)
        if ctx.is_main:
            write_json(run_dir / "metrics.json", metrics)
            print(f"wrote {run_dir}", flush=True)
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(run_cli(main))
