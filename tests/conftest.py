"""Shared pytest fixtures: tiny datasets in the real on-disk formats and a script runner.

The suite must pass on a fresh clone without the datasets, so every script is exercised on
fixtures written here in the same formats the real files use (MNIST idx files in
torchvision's layout, ETT-shaped CSV). Tests marked `realdata` also run on the real files
when `data/` holds them (CI links ../shared/data there).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA_ROOT = REPO_ROOT / "data"

# Make the scripts at the repo root importable as modules (`import gan_mnist`).
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the idx format MNIST ships in (magic 0x0000080N, big-endian dims)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_tiny_mnist(root: Path, n_train: int = 512, n_test: int = 256, seed: int = 0) -> Path:
    """Write the four MNIST idx files under `root/MNIST/raw/` (plus their .gz twins, as
    torchvision leaves them). Images are crude, label-dependent blobs so that a classifier can
    learn something in a few steps. Returns `root`."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:28, 0:28]
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = np.zeros((n, 28, 28), dtype=np.float64)
        for i, lab in enumerate(labels):
            angle = 2 * math.pi * lab / 10
            cy, cx = 14 + 7 * math.sin(angle), 14 + 7 * math.cos(angle)
            images[i] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 12.0)
        images = np.clip(images * 255 + rng.normal(0, 10, images.shape), 0, 255).astype(np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            path = raw / f"{split}-{kind}-ubyte"
            _write_idx(path, arr)
            with gzip.open(str(path) + ".gz", "wb") as f:
                f.write(path.read_bytes())
    return root


ETT_COLUMNS = ["date", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]


def write_tiny_ett(path: Path, n_rows: int = 14400, freq: str = "h", seed: int = 0) -> Path:
    """Write an ETT-shaped CSV (date + 7 numeric columns, OT last): daily and weekly cycles plus
    noise. 14400 hourly rows is exactly the 20 months the standard ETT split uses."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    step_hours = {"h": 1.0, "15min": 0.25}[freq]
    t = np.arange(n_rows) * step_hours
    data = {
        "date": pd.date_range("2016-07-01", periods=n_rows, freq=freq).strftime("%Y-%m-%d %H:%M:%S")
    }
    for j, col in enumerate(ETT_COLUMNS[1:]):
        daily = np.sin(2 * np.pi * t / 24 + j)
        weekly = 0.5 * np.sin(2 * np.pi * t / (24 * 7) + 2 * j)
        data[col] = 5 + 2 * daily + weekly + 0.3 * rng.standard_normal(n_rows) + 0.0001 * t
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(data).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def tiny_mnist_root(tmp_path_factory) -> Path:
    """A data root holding tiny MNIST idx files (512 train / 256 test images)."""
    return write_tiny_mnist(tmp_path_factory.mktemp("mnist_data"))


@pytest.fixture(scope="session")
def tiny_ett_root(tmp_path_factory) -> Path:
    """A data root holding `ETT-small/ETTh1.csv` with synthetic hourly values (14400 rows)."""
    root = tmp_path_factory.mktemp("ett_data")
    write_tiny_ett(root / "ETT-small" / "ETTh1.csv")
    return root


def real_data_available(*relative: str) -> bool:
    return all((REAL_DATA_ROOT / r).exists() for r in relative)


@pytest.fixture(scope="session")
def real_mnist_root() -> Path:
    if not real_data_available(
        "MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/t10k-images-idx3-ubyte"
    ):
        pytest.skip("real MNIST not in data/MNIST/raw")
    return REAL_DATA_ROOT


@pytest.fixture(scope="session")
def real_ett_root() -> Path:
    if not real_data_available("ETT-small/ETTh1.csv"):
        pytest.skip("real ETTh1 not in data/ETT-small")
    return REAL_DATA_ROOT


def run_script(
    script: str, *args: str, cwd: Path | None = None, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a repo script as a user would (`python script.py ...`), on the CPU, without a TTY
    (so progress comes as plain lines). Fails the test with the script's output on error."""
    environ = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *map(str, args)],
        cwd=cwd or REPO_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{script} {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
        )
    return proc


# The mysql_sync tests share one set of throwaway MariaDB servers for the whole session.
from mysql_env import env, servers  # noqa: E402, F401
