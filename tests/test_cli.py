"""Every ``loli-plugin`` command answers a bad argument with ONE line on stderr and exit status 2,
argparse-style, before doing any work or printing anything else."""

import subprocess
import sys

import pytest
import torch

from loli_plugin.cli import build_parser, main

BAD = {
    "optimizer --clusters 0": (
        ["bench", "optimizer", "--clusters", "0"],
        "argument --clusters: --clusters must be >= 1, got 0",
    ),
    "optimizer --inner NoSuchOpt": (
        ["bench", "optimizer", "--inner", "NoSuchOpt"],
        "--inner NoSuchOpt: not a torch.optim optimizer; use one of",
    ),
    "optimizer --inner LBFGS (LoliClustered refuses)": (
        ["bench", "optimizer", "--inner", "LBFGS"],
        "unknown inner optimizer inner='LBFGS'",
    ),
    "optimizer --inner Rprop (no weight_decay)": (
        ["bench", "optimizer", "--inner", "Rprop"],
        "--inner Rprop with --impl foreach on cpu does not work",
    ),
    "optimizer --impl fused with RMSprop": (
        ["bench", "optimizer", "--inner", "RMSprop", "--impl", "fused"],
        "--inner RMSprop with --impl fused on cpu does not work",
    ),
    "optimizer --steps 0": (
        ["bench", "optimizer", "--steps", "0"],
        "argument --steps: must be a whole number >= 1, got 0",
    ),
    "optimizer --params abc": (
        ["bench", "optimizer", "--params", "abc"],
        "argument --params: expected a finite number > 0, got 'abc'",
    ),
    "optimizer --device nonsense": (
        ["bench", "optimizer", "--device", "nonsense"],
        "argument --device: 'nonsense' is not a torch device",
    ),
    "sampler --clusters 0": (
        ["bench", "sampler", "--clusters", "0"],
        "argument --clusters: --clusters must be >= 1, got 0",
    ),
    "sampler --batch 0": (
        ["bench", "sampler", "--batch", "4", "0"],
        "argument --batch: must be a whole number >= 1, got 0",
    ),
    "quality --lr 0": (["bench", "quality", "--lr", "0"], "argument --lr: must be a finite number > 0, got 0"),
    "make-base --steps -1": (
        ["bench", "make-base", "--objective", "flow", "--steps", "-1", "--out", "x.safetensors"],
        "argument --steps: must be a whole number >= 1, got -1",
    ),
    "demo --steps 0": (["demo", "--steps", "0"], "argument --steps: must be a whole number >= 1, got 0"),
    "demo --batch 0": (["demo", "--batch", "0"], "argument --batch: must be a whole number >= 1, got 0"),
    "demo --seed -1": (["demo", "--seed", "-1"], "argument --seed: must be a whole number >= 0, got -1"),
    "memory --clusters 0": (
        ["memory", "--params", "1M", "--clusters", "0"],
        "argument --clusters: --clusters must be >= 1, got 0",
    ),
}


def prog(argv):
    return " ".join(["loli-plugin", *argv[:2]] if argv[:1] == ["bench"] else ["loli-plugin", *argv[:1]])


@pytest.mark.parametrize("argv, message", BAD.values(), ids=BAD.keys())
def test_bad_argument_is_one_line_on_stderr_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing ran: no table header, no progress
    assert err.count("\n") == 1 and err.startswith(f"{prog(argv)}: error: {message}"), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda(capsys):
    assert main(["bench", "optimizer", "--device", "cuda"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (
        f"loli-plugin bench optimizer: error: argument --device: cuda: CUDA is not available here "
        f"(torch {torch.__version__}); use --device cpu\n"
    )


@pytest.mark.parametrize(
    "argv, what",
    [
        (["demo", "--out", "FILE"], "--out {tmp}/FILE is a file; give a folder for the PNG"),
        (["bench", "make-base", "--objective", "flow", "--out", "EMPTY"], "--out {tmp}/EMPTY is a folder"),
        (["plot", "MISSING"], "{tmp}/MISSING: no such folder"),
        (["plot", "EMPTY"], "{tmp}/EMPTY: no TensorBoard event files in it or up to 2 folder levels below"),
    ],
)
def test_bad_path_is_one_line_on_stderr_and_exit_2(argv, what, tmp_path, capsys):
    (tmp_path / "FILE").write_text("not a folder")
    (tmp_path / "EMPTY").mkdir()
    argv = [str(tmp_path / a) if a.isupper() else a for a in argv]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"{prog(argv)}: error: {what.format(tmp=tmp_path)}"), err


def test_no_command_prints_the_usage_and_every_command(capsys):
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("usage: loli-plugin [-h] [--version] COMMAND ...") and err == ""
    for command in ("demo", "doctor", "memory", "plot", "bench"):
        assert f"\n    {command} " in out, out


def test_version(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"loli-plugin {version('loli-plugin')}\n"


def test_demo_out_that_cannot_be_made_is_one_line(capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("peft")
    assert main(["demo", "--out", "/proc/nope"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("loli-plugin demo: error: --out /proc/nope: cannot create that folder"), err


def test_the_installed_entry_point_prints_no_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "loli_plugin.cli", "bench", "optimizer", "--clusters", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "loli-plugin bench optimizer: error: argument --clusters: --clusters must be >= 1, got 0; "
        "set --clusters=10 (the default), or --clusters=1 to train with a single optimizer state"
    ]


def parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action.choices, dict):  # a sub-command action: its choices are the sub-parsers
            for sub in action.choices.values():
                yield from parsers(sub)


def test_every_option_has_help_text():
    missing = [f"{p.prog}: {action.dest}" for p in parsers(build_parser()) for action in p._actions if not action.help]
    assert missing == []


def test_doctor_names_the_trainers_it_knows_when_a_folder_holds_none(tmp_path, capsys):
    assert main(["doctor", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no trainer loli-plugin knows" in err[0]
    from loli_plugin.adapter import adapters

    assert adapters() and all(a.library in err[0] for a in adapters())
