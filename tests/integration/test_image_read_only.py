"""The image's data dir, built by scripts/build-assets.sh, lets the sidecar start without writing.

The pod runs with readOnlyRootFilesystem, and there is no Docker engine in CI to build
the image, so this plays the image's start: the Dockerfile's `model` and `index` steps
into a fresh data dir, then `inference-router serve` with the image's environment, a
home it cannot write to and, when the test runs as root, as the image's uid 10001 by
util-linux's setpriv (otherwise with the data dir made read-only). It must become ready,
load the baked index instead of building one, and leave both directories as they were.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.devstack.processes import free_ports, wait_http_ok
from sidecar.errors import StackError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
IMAGE_UID = 10001
Snapshot = dict[str, tuple[int, int]]


def snapshot(*roots: Path) -> Snapshot:
    """Every path under `roots` with its size and modification time."""
    return {
        str(path): (path.stat().st_size, path.stat().st_mtime_ns)
        for root in roots
        for path in [root, *root.rglob("*")]
    }


def set_writable(root: Path, writable: bool) -> None:
    """Add or remove write permission on everything under `root`."""
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        write = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        path.chmod((mode | stat.S_IWUSR) if writable else (mode & ~write))


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are 0700, closed to the image's uid.
    with tempfile.TemporaryDirectory(prefix="image-data-") as name:
        root = Path(name)
        root.chmod(0o755)
        yield root
        set_writable(root, True)


@pytest.fixture(scope="module")
def data_dir(workdir: Path) -> Path:
    data = workdir / "data"
    for step in ("model", "index"):
        subprocess.run(
            [str(ROOT / "scripts" / "build-assets.sh"), step, sys.executable, str(data)],
            check=True,
            capture_output=True,
            timeout=240,
        )
    return data


def test_sidecar_starts_from_the_baked_data_dir_without_writing(
    workdir: Path, data_dir: Path
) -> None:
    home = workdir / "home"
    home.mkdir(mode=0o555)
    setpriv = shutil.which("setpriv")
    as_image_user = os.geteuid() == 0 and setpriv is not None
    if not as_image_user:
        set_writable(data_dir, False)
    before = snapshot(data_dir, home)
    grpc_port, admin_port = free_ports(2)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "TMPDIR": str(home),
        "INFERENCE_ROUTER_DATA": str(data_dir),
        "ORT_DISABLE_TELEMETRY": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    # setpriv, not Popen(user=...): here the latter's exec of the venv's python is refused.
    drop = [str(setpriv), f"--reuid={IMAGE_UID}", f"--regid={IMAGE_UID}", "--clear-groups"]
    argv = [
        *(drop if as_image_user else []),
        sys.executable, "-m", "sidecar", "serve",
        "--envoy-config", str(ROOT / "envoy" / "local.yaml"),
        "--listen", f"127.0.0.1:{grpc_port}",
        "--admin-listen", f"127.0.0.1:{admin_port}",
    ]  # fmt: skip
    log_path = workdir / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_http_ok(f"http://127.0.0.1:{admin_port}/readyz", 60, process)
        except StackError as error:
            pytest.fail(f"{error}\n{log_path.read_text(encoding='utf-8')}")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log_path.read_text(encoding="utf-8")
    assert "loaded embedder" in output
    assert "building the exemplar index" not in output
    assert "distilling" not in output
    assert "telemetry" not in output
    assert snapshot(data_dir, home) == before
    if as_image_user:
        owned = [p for p in workdir.rglob("*") if p.stat().st_uid == IMAGE_UID]
        assert owned == []


def test_the_script_refuses_an_unknown_step() -> None:
    script = shutil.which(str(ROOT / "scripts" / "build-assets.sh"))
    assert script is not None
    result = subprocess.run([script, "nonsense", sys.executable], capture_output=True, timeout=10)
    assert result.returncode == 2
    assert b"usage:" in result.stderr
