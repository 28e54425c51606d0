"""Every command that reads a checkpoint answers a file that is not one with one line, never a traceback.

Commands: recu eval, analyze, export, bench, convert-authors, and train with init_from, teacher or
--resume; plus
``recu train --resume`` with no run to resume (issue 10, section 4).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Callable

import pytest
import torch

from recu.cli import main

TINY = ["model=digits_cnn_1w1a", "dataset=digits", "batch_size=64", "eval_batch_size=500", "warmup_epochs=0",
        "epochs=1", "device=cpu", "progress=false", "monitor=false"]


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _text(path: Path) -> None:
    path.write_text("epoch,loss\n1,0.5\nthis is not a checkpoint\n")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _foreign_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes/readme.txt", "a zip file, but not one torch.save wrote")


def _tensor_file(path: Path) -> None:
    torch.save(torch.zeros(3), path)  # a real torch file, not a checkpoint


def _truncated_checkpoint(path: Path) -> None:
    torch.save({"model": {"w": torch.randn(64, 64)}, "model_spec": {"name": "resnet20_1w1a"}}, path)
    path.write_bytes(path.read_bytes()[:300])


BAD_FILES: dict[str, Callable[[Path], None]] = {
    "random": _random_bytes, "text": _text, "empty": _empty, "zip": _foreign_zip, "tensor": _tensor_file,
    "truncated": _truncated_checkpoint,
}


def _commands(bad: Path, tmp_path: Path) -> dict[str, list[str]]:
    def train(*extra: str) -> list[str]:
        args = ["train"]
        for item in TINY + [f"out_dir={tmp_path / 'runs'}", *extra]:
            args += ["--set", item]
        return args

    return {
        "eval": ["eval", str(bad), "--device", "cpu"],
        "analyze": ["analyze", str(bad), "-o", str(tmp_path / "report")],
        "export": ["export", str(bad), "-o", str(tmp_path / "model.recu")],
        "bench": ["bench", str(bad), "--no-compile", "--repeat", "1", "--batch", "1"],
        "convert-authors": ["convert-authors", str(bad), "--model", "resnet20_1w1a", "-o", str(tmp_path / "c.pt")],
        "train_init_from": train("name=init", f"init_from={bad}"),
        "train_teacher": train("name=teacher", f"teacher={bad}"),
    }


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_file_that_is_not_a_checkpoint_gives_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, kind: str) -> None:
    bad = tmp_path / f"bad_{kind}.pt"
    BAD_FILES[kind](bad)
    for command, argv in _commands(bad, tmp_path).items():
        code = main(argv)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code != 0, (command, kind)
        assert len(lines) == 1, (command, kind, err)
        assert lines[0].startswith(f"recu {argv[0]}: error: ") and str(bad) in lines[0], (command, kind, err)
        assert "Traceback" not in err


@pytest.mark.parametrize("kind", ["random", "text", "empty"])
def test_resume_from_a_corrupt_last_pt_gives_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, kind: str) -> None:
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    BAD_FILES[kind](run / "last.pt")
    argv = ["train", "--resume"]
    for item in TINY + [f"out_dir={tmp_path / 'runs'}", "name=r"]:
        argv += ["--set", item]
    assert main(argv) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recu train: error: checkpoint ") and "last.pt" in lines[0]


def test_resume_with_no_run_to_resume_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "--resume"]
    for item in TINY + [f"out_dir={tmp_path / 'runs'}", "name=never_started"]:
        argv += ["--set", item]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"recu train: error: --resume: there is no run to resume in {tmp_path / 'runs' / 'never_started'} "
                   "(no last.pt); start it without --resume"]
    assert not (tmp_path / "runs" / "never_started" / "last.pt").exists()  # nothing was started instead
