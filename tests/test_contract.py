"""The command-line contract, the same for every training script (the common block implements
it; tests/test_common_block.py keeps the copies identical):

- usage mistakes exit 2, data/runtime failures exit 1, each with ONE line on stderr naming the
  flag or file, never a traceback;
- a failed start leaves no run folder (and no empty data folder);
- a reused --run-name is refused; --resume continues in the checkpoint's own folder;
- a checkpoint of another script, a truncated one or a text file is refused with exit 2;
- every flag has help text and shows its default at most once.

Each script's own test module says how to make a tiny run of it:
    CONTRACT = {"tiny": [flags for a seconds-long run], "size_flag": "--epochs",
                "data": "mnist" | "ett" | None}
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_script

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["gan_mnist", "gan_1d_normal", "gan_curve_painter", "real_nvp", "autoformer_decomp",
           "seq2seq_etth"]  # fmt: skip


def contract(script: str) -> dict:
    return importlib.import_module(f"test_{script}").CONTRACT


@pytest.fixture
def data_roots(tiny_mnist_root, tiny_ett_root) -> dict:
    return {"mnist": tiny_mnist_root, "ett": tiny_ett_root, None: REPO_ROOT / "data"}


def run(script: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    return run_script(f"{script}.py", *args, cwd=cwd, check=False, timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *words: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], err[-2000:])
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("script", SCRIPTS)
def test_usage_errors_exit_2_with_one_line_and_no_run_folder(script, tmp_path):
    c = contract(script)
    out = tmp_path / "out"
    common = ["--out", out, "--data-root", tmp_path / "nodata"]
    cases = [
        ([c["size_flag"], "0"], c["size_flag"]),
        (["--threads", "-1"], "--threads"),
        (["--resume", tmp_path / "missing.pt"], "missing.pt"),
        (["--no-such-flag"], "--no-such-flag"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device"))
    for flags, word in cases:
        proc = run(script, *common, *flags, cwd=tmp_path)
        assert_one_line_error(proc, 2, word)
        assert not out.exists(), flags
        assert not (tmp_path / "nodata").exists(), flags


@pytest.mark.parametrize("script", SCRIPTS)
def test_foreign_truncated_or_text_checkpoints_are_refused(script, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    foreign = tmp_path / "foreign.pt"
    other = "gan_mnist" if script != "gan_mnist" else "real_nvp"
    torch.save({"script": other, "version": 1, "model": {}}, foreign)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(foreign.read_bytes()[:40])
    for path, word in ((text, "notes.txt"), (foreign, other), (truncated, "truncated.pt")):
        proc = run(script, "--out", tmp_path / "out", "--resume", path, cwd=tmp_path)
        assert_one_line_error(proc, 2, word)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_tiny_run_then_reused_name_is_refused_and_resume_stays_in_its_folder(
    script, data_roots, tmp_path
):
    c = contract(script)
    data_root = data_roots[c["data"]]
    out = tmp_path / "out"
    args = ["--out", out, "--data-root", data_root, "--run-name", "r", "--seed", "3", *c["tiny"]]
    run_script(f"{script}.py", *args, cwd=tmp_path, timeout=600)
    run_dir = out / script / "r"
    for name in ("config.json", "metrics.json", "log.jsonl", "checkpoint.pt"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert all(not isinstance(v, dict) for v in config.values()), "config.json must be flat"
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["script"] == script and "rng" in ckpt
    metrics_before = (run_dir / "metrics.json").read_bytes()
    proc = run(script, *args, cwd=tmp_path)
    assert_one_line_error(proc, 2, "--run-name")
    assert (run_dir / "metrics.json").read_bytes() == metrics_before
    # --resume of a finished run: continues in the same folder, makes no new one.
    proc = run(script, "--out", tmp_path / "elsewhere", "--resume", run_dir / "checkpoint.pt",
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "elsewhere").exists()
    assert sorted(p.name for p in (out / script).iterdir()) == ["r"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_data_exits_1_naming_the_file_and_leaves_nothing_behind(script, tmp_path):
    c = contract(script)
    if c["data"] is None:
        pytest.skip("synthetic data")
    empty = tmp_path / "data"
    empty.mkdir()
    env_block = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / f"{script}.py"), "--data-root", str(empty),
         "--out", str(tmp_path / "out"), *c["tiny"]],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        env={**os.environ, **env_block, "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    assert_one_line_error(proc, 1, str(empty))
    assert not (tmp_path / "out").exists()
    assert list(empty.iterdir()) == [], list(empty.rglob("*"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_documents_every_flag_once(script, tmp_path):
    proc = run(script, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    module = importlib.import_module(script)
    parser = module.build_parser()
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{action.option_strings[0]} has no help text"
    text = proc.stdout
    assert "(default: None)" not in text
    for block in text.split("\n  -")[1:]:
        assert block.count("default:") <= 1, block
