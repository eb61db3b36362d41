"""The command line: cheap to start, and errors as one line with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
        ["envoy", "tracing", "in.yaml", "out.yaml", "--otlp-endpoint", "http://j:4317"],
    ):
        args = parser.parse_args(argv)
        assert callable(args.run), argv


def test_a_subcommand_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli_main.build_parser().parse_args([])
    assert caught.value.code == 2
    assert "command" in capsys.readouterr().err


def test_envoy_tracing_writes_a_traced_copy_of_the_api_listener_only(tmp_path: Path) -> None:
    source = ROOT / "envoy" / "local.yaml"
    before = source.read_text()
    target = tmp_path / "traced" / "envoy.yaml"
    target.parent.mkdir()
    argv = ["envoy", "tracing", str(source), str(target), "--otlp-endpoint", "http://jaeger:4317"]
    assert cli_main.main(argv) == 0
    assert source.read_text() == before
    config = yaml.safe_load(target.read_text())
    static = config["static_resources"]
    traced = {
        listener["name"]: "tracing" in listener["filter_chains"][0]["filters"][0]["typed_config"]
        for listener in static["listeners"]
    }
    assert traced == {"openai_api": True, "metrics": False}  # a scrape is not worth a trace
    (collector,) = [c for c in static["clusters"] if c["name"] == "otel_collector"]
    endpoint = collector["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "jaeger", "port_value": 4317}
    untraced = {key: value for key, value in config.items() if key != "static_resources"}
    assert untraced == {k: v for k, v in yaml.safe_load(before).items() if k != "static_resources"}


def test_envoy_tracing_refuses_a_tls_endpoint_in_one_line(tmp_path: Path) -> None:
    result = _python(
        "-m", "sidecar", "envoy", "tracing", str(ROOT / "envoy" / "local.yaml"),
        str(tmp_path / "out.yaml"), "--otlp-endpoint", "https://collector:4317",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("inference-router: error: --otlp-endpoint='https://")
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "out.yaml").exists()
