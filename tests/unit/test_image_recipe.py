"""The container image is built by the same steps as `make install`, and runs as a non-root user.

There is no Docker engine in CI, so the Dockerfile is checked by reading it: both it and
the Makefile must call scripts/build-assets.sh (and the Makefile must no longer hold the
steps itself), the runtime stage must run `inference-router serve` as uid 10001, and the
data dir it bakes in must be the one sidecar/semantic/model_store.py reads from the
environment, or the sidecar would try to build a model on a read-only filesystem.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

from sidecar.semantic.model_store import default_data_dir

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "scripts/build-assets.sh"
RUNTIME_USER = "10001"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword (upper case) and its argument text."""

    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """The instructions of each build stage, in order (a stage starts at FROM)."""
    joined = re.sub(r"\\\n", " ", "\n".join(_without_comments(text)))
    stages: list[list[Instruction]] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, args = line.strip().partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _without_comments(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.lstrip().startswith("#")]


def script_calls(command_text: str) -> list[list[str]]:
    """The argument lists of every scripts/build-assets.sh call in a shell command."""
    words = shlex.split(command_text.replace("\t", " "))
    calls: list[list[str]] = []
    for i, word in enumerate(words):
        if word.endswith(SCRIPT):
            rest = words[i + 1 :]
            end = next((j for j, w in enumerate(rest) if w in ("&&", ";", "||")), len(rest))
            calls.append(rest[:end])
    return calls


def env_values(stage: list[Instruction]) -> dict[str, str]:
    """The variables a stage's ENV instructions set (the KEY=VALUE form)."""
    values: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.args):
                key, _, value = pair.partition("=")
                values[key] = value
    return values


def makefile_recipe(text: str, target: str) -> list[str]:
    """The recipe lines (tab-indented) of `target` in a Makefile."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def script_steps(text: str) -> set[str]:
    """The step names the script's `case` accepts."""
    return set(re.findall(r"^(\w+)\)$", text, flags=re.MULTILINE))


def _stages() -> list[list[Instruction]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text(encoding="utf-8"))


def _last(stage: list[Instruction], keyword: str) -> Instruction:
    return [i for i in stage if i.keyword == keyword][-1]


def test_parsers_read_what_they_should() -> None:
    stages = parse_dockerfile(
        "FROM a AS b\n# RUN ignored\nRUN x \\\n\t&& scripts/build-assets.sh model py /d && y\n"
        "FROM a\nENV K=v \\\n\tL=w\nUSER 5\n"
    )
    assert [[i.keyword for i in stage] for stage in stages] == [
        ["FROM", "RUN"],
        ["FROM", "ENV", "USER"],
    ]
    assert script_calls(stages[0][1].args) == [["model", "py", "/d"]]
    assert env_values(stages[1]) == {"K": "v", "L": "w"}
    assert makefile_recipe("a: b\n\tone\n\ttwo\n\nc:\n\tthree\n", "a") == ["one", "two"]


def test_the_script_exists_and_is_executable() -> None:
    script = ROOT / SCRIPT
    assert os.access(script, os.X_OK)
    assert script_steps(script.read_text(encoding="utf-8")) >= {"proto", "deps", "model", "index"}


def test_makefile_and_dockerfile_run_the_same_script() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    make_steps = [
        call[0]
        for target in ("$(PROTO_OUT)", "$(STAMP)", "model")
        for line in makefile_recipe(makefile, target)
        for call in script_calls(line)
    ]
    assert make_steps == ["proto", "deps", "model"]
    # The steps live in the script only: no copy left in the Makefile to drift.
    assert "--no-deps" not in makefile
    assert "grpc_tools" not in makefile
    builder = _stages()[0]
    docker_steps = [call[0] for i in builder if i.keyword == "RUN" for call in script_calls(i.args)]
    assert docker_steps == ["proto", "deps", "model", "index"]
    steps = script_steps((ROOT / SCRIPT).read_text(encoding="utf-8"))
    assert set(docker_steps) <= steps


def test_runtime_stage_runs_inference_router_serve_as_non_root() -> None:
    runtime = _stages()[-1]
    user = _last(runtime, "USER").args.split(":")[0]
    assert user == RUNTIME_USER
    assert any(RUNTIME_USER in i.args for i in runtime if i.keyword == "RUN")  # created
    # The exec form (a JSON list): SIGTERM reaches the sidecar, not a shell.
    assert json.loads(_last(runtime, "ENTRYPOINT").args) == ["inference-router"]
    assert json.loads(_last(runtime, "CMD").args) == ["serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "inference-router" in scripts["project"]["scripts"]


def test_the_baked_data_dir_is_the_one_model_store_reads() -> None:
    builder, runtime = _stages()[0], _stages()[-1]
    env = env_values(runtime)
    data_dir = default_data_dir(env)
    assert str(data_dir) == env["INFERENCE_ROUTER_DATA"]
    built_into = {
        call[2]
        for i in builder
        if i.keyword == "RUN"
        for call in script_calls(i.args)
        if call[0] in ("model", "index")
    }
    assert built_into == {str(data_dir)}
    copies = [shlex.split(i.args) for i in runtime if i.keyword == "COPY"]
    assert ["--from=builder", str(data_dir), str(data_dir)] in copies
    # ONNX Runtime would otherwise try to write a telemetry id under $HOME at start.
    assert env["ORT_DISABLE_TELEMETRY"] == "1"


def test_dockerignore_lets_in_what_the_builder_copies() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {
        source
        for i in _stages()[0]
        if i.keyword == "COPY"
        for source in shlex.split(i.args)[:-1]
        if not source.startswith("--")
    }
    assert copied <= allowed
