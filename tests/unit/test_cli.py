"""The command line: cheap to start, and errors as one line with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
HEAVY_MODULES = ("faiss", "onnxruntime")

# Build the whole parser, parse a simulator command line, report which heavy modules
# that loaded. Run in a fresh interpreter: this test process has imported them already.
PARSE_SIMULATE = f"""
import json, sys
from sidecar.cli.main import build_parser
args = build_parser().parse_args(["simulate", "--name", "a", "--model", "m", "--port", "0"])
assert args.command == "simulate" and args.port == 0, args
print(json.dumps([name for name in {list(HEAVY_MODULES)!r} if name in sys.modules]))
"""


def _python(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def test_parsing_a_simulator_command_line_loads_no_faiss_or_onnxruntime() -> None:
    result = _python("-c", PARSE_SIMULATE)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_check_with_a_missing_envoy_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "envoy.yaml"
    result = _python("-m", "sidecar", "check", "--envoy-config", str(missing))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("inference-router: error: ")
    assert str(missing) in lines[0] and "cannot read" in lines[0]
    assert "Traceback" not in result.stderr


def test_every_subcommand_is_wired() -> None:
    parser = cli_main.build_parser()
    for argv in (
        ["serve", "--no-semantic"],
        ["check"],
        ["stack"],
        ["decide", "{}"],
        ["simulate", "--name", "a", "--model", "m", "--port", "0"],
        ["model", "build"],
        ["index", "build", "x.jsonl", "-o", "out"],
        ["eval", "--split", "rows.jsonl"],
        ["calibrate", "--settings", "s.yaml", "--target-oos-recall", "0.9"],
    ):
        args = parser.parse_args(argv)
        assert callable(args.run), argv


def test_a_subcommand_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli_main.build_parser().parse_args([])
    assert caught.value.code == 2
    assert "command" in capsys.readouterr().err
