"""The fixtures themselves write the real formats: read them back the way the data loaders do."""

import numpy as np
import pandas as pd
from conftest import ETT_COLUMNS


def test_tiny_mnist_is_valid_idx(tiny_mnist_root):
    raw = tiny_mnist_root / "MNIST" / "raw"
    data = (raw / "train-images-idx3-ubyte").read_bytes()
    assert int.from_bytes(data[:4], "big") == 0x00000803
    n, h, w = (int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(3))
    assert (n, h, w) == (512, 28, 28)
    assert len(data) == 16 + n * h * w
    labels = (raw / "train-labels-idx1-ubyte").read_bytes()
    assert int.from_bytes(labels[:4], "big") == 0x00000801
    assert set(np.frombuffer(labels[8:], dtype=np.uint8)) <= set(range(10))


def test_tiny_ett_has_ett_columns(tiny_ett_root):
    df = pd.read_csv(tiny_ett_root / "ETT-small" / "ETTh1.csv")
    assert list(df.columns) == ETT_COLUMNS
    assert len(df) == 14400
    assert pd.to_datetime(df["date"]).diff().iloc[1:].eq(pd.Timedelta(hours=1)).all()
