"""The common block: one reference copy (tests/common_block.py), pasted verbatim into every
training script between its marker lines. A copy that drifts fails here; the block's own
behaviour (atomic checkpoints, refusals, run folders) is tested once, on the reference."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common_block as cb  # noqa: E402

SCRIPTS = ["gan_mnist", "gan_1d_normal", "gan_curve_painter", "real_nvp", "autoformer_decomp",
           "seq2seq_etth"]  # fmt: skip
BLOCK_RE = re.compile(r"^# =+ common block: begin\n.*?^# =+ common block: end\n", re.S | re.M)


def block_of(path: Path) -> str:
    found = BLOCK_RE.findall(path.read_text(encoding="utf-8"))
    assert len(found) == 1, f"{path.name}: expected exactly one common block, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_carries_the_block_verbatim(script):
    reference = block_of(REPO_ROOT / "tests" / "common_block.py")
    assert block_of(REPO_ROOT / f"{script}.py") == reference, (
        f"{script}.py: its common block differs from tests/common_block.py; copy it verbatim"
    )


def args_for(tmp_path: Path, *argv: str) -> argparse.Namespace:
    p = cb.ArgumentParser(prog="x")
    cb.add_common_args(p)
    return p.parse_args(["--out", str(tmp_path / "out"), *argv])


def test_parser_errors_are_usage_errors():
    p = cb.ArgumentParser(prog="x")
    cb.add_common_args(p)
    with pytest.raises(cb.UsageError, match="--threads"):
        p.parse_args(["--threads", "two"])
    assert "(default: 1)" in p.format_help() and "(default: None)" not in p.format_help()
    assert "(default: 0)" in p.format_help()  # --seed: a default of 0 is shown, False is not


def test_run_dir_refuses_a_used_name_and_resume_uses_the_checkpoint_folder(tmp_path):
    args = args_for(tmp_path, "--run-name", "a")
    run_dir = cb.resolve_run_dir(args)
    assert run_dir == tmp_path / "out" / cb.SCRIPT / "a" and not run_dir.exists()
    cb.open_run_dir(run_dir, {"lr": 1e-3, "betas": (0.5, 0.9), "root": Path("d")},
                    resume=False, overwrite=False)  # fmt: skip
    config = json.loads((run_dir / "config.json").read_text())
    assert config == {"lr": 1e-3, "betas": [0.5, 0.9], "root": "d"}
    with pytest.raises(cb.UsageError, match="--run-name a"):
        cb.resolve_run_dir(args_for(tmp_path, "--run-name", "a"))
    (run_dir / "old.txt").write_text("x")
    again = args_for(tmp_path, "--run-name", "a", "--overwrite")
    cb.open_run_dir(cb.resolve_run_dir(again), {}, resume=False, overwrite=True)
    assert not (run_dir / "old.txt").exists()
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(b"")
    resume = args_for(tmp_path, "--resume", str(ckpt))
    assert cb.resolve_run_dir(resume) == run_dir.resolve()
    with pytest.raises(TypeError, match="flat"):
        cb.open_run_dir(tmp_path / "n", {"nested": {"a": 1}}, resume=False, overwrite=False)


def test_checkpoint_round_trip_restores_rng_and_refuses_foreign_files(tmp_path):
    path = tmp_path / "checkpoint.pt"
    cb.seed_everything(5)
    cb.save_checkpoint(path, {"w": torch.arange(3)}, version=2)
    expected = torch.rand(4)
    torch.rand(10)  # move the generator on
    ckpt = cb.load_checkpoint(path, version=2)
    cb.set_rng_state(ckpt["rng"])
    assert torch.equal(torch.rand(4), expected) and torch.equal(ckpt["w"], torch.arange(3))
    assert not path.with_name("checkpoint.pt.tmp").exists()
    with pytest.raises(cb.UsageError, match="version 2"):
        cb.load_checkpoint(path, version=3)
    torch.save({"script": "other", "version": 2}, tmp_path / "other.pt")
    with pytest.raises(cb.UsageError, match="written by other"):
        cb.load_checkpoint(tmp_path / "other.pt", version=2)
    (tmp_path / "torn.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(cb.UsageError, match="not a readable checkpoint"):
        cb.load_checkpoint(tmp_path / "torn.pt", version=2)


def test_missing_data_names_the_file_and_explains_a_nested_link(tmp_path):
    with pytest.raises(cb.RunError, match="MNIST/raw/train"):
        cb.require_files(tmp_path, ["MNIST/raw/train"], "download it")
    (tmp_path / "MNIST" / "MNIST" / "raw").mkdir(parents=True)
    with pytest.raises(cb.RunError, match="inside an existing folder"):
        cb.require_files(tmp_path, ["MNIST/raw/train"], "download it")
    cb.remove_empty_dirs(tmp_path / "MNIST" / "MNIST" / "raw", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_run_cli_maps_errors_to_exit_codes(capsys):
    def raises(exc):
        def main(argv):
            raise exc

        return main

    assert cb.run_cli(raises(cb.UsageError("--x bad"))) == 2
    assert cb.run_cli(raises(cb.RunError("data/f missing"))) == 1
    assert cb.run_cli(lambda argv: None) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["common_block: error: --x bad", "common_block: error: data/f missing"]


def test_resume_with_run_name_is_refused_and_an_unwritable_out_is_one_line(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"")
    args = args_for(tmp_path, "--resume", str(ckpt), "--run-name", "b")
    with pytest.raises(cb.UsageError, match="drop --run-name"):
        cb.check_common_args(args)
    (tmp_path / "file").write_text("x")
    with pytest.raises(cb.RunError, match="cannot write the run folder"):
        cb.open_run_dir(tmp_path / "file" / "run", {}, resume=False, overwrite=False)


@pytest.mark.parametrize("checkpointed", [False, True])
def test_interrupt_or_failure_removes_a_run_folder_without_checkpoint(tmp_path, capsys,
                                                                     monkeypatch, checkpointed):  # fmt: skip
    monkeypatch.setattr(cb, "NEW_RUN_DIR", [])
    run_dir = tmp_path / "out" / "run"

    def main(argv):
        cb.open_run_dir(run_dir, {}, resume=False, overwrite=False)
        if checkpointed:
            cb.save_checkpoint(run_dir / "checkpoint.pt", {}, version=1)
        raise KeyboardInterrupt if argv == ["ctrl-c"] else cb.RunError("diverged")

    assert cb.run_cli(main, ["ctrl-c"]) == 130
    assert run_dir.is_dir() == checkpointed
    message = capsys.readouterr().err.strip()
    assert message.startswith("common_block: interrupted")
    assert ("--resume" in message) == checkpointed and len(message.splitlines()) == 1
    monkeypatch.setattr(cb, "NEW_RUN_DIR", [])
    if checkpointed:
        (run_dir / "checkpoint.pt").unlink()
    assert cb.run_cli(main, ["fail"]) == 1
    assert run_dir.is_dir() == checkpointed
    assert capsys.readouterr().err.strip() == "common_block: error: diverged"


def test_resume_cuts_log_jsonl_back_to_the_checkpoint(tmp_path):
    log, ckpt = tmp_path / "log.jsonl", tmp_path / "checkpoint.pt"
    for step in range(3):
        cb.append_jsonl(log, {"step": step})
    cb.save_checkpoint(ckpt, {}, version=1)
    for step in range(3, 5):
        cb.append_jsonl(log, {"step": step})  # logged after the checkpoint, then killed
    cb.load_checkpoint(ckpt, version=1, flag="--checkpoint")  # re-scoring leaves the log alone
    assert len(log.read_text().splitlines()) == 5
    cb.load_checkpoint(ckpt, version=1)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [0, 1, 2]
