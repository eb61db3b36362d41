"""Supervision of the local stack: restarts, children dying with their parent, taken ports.

The in-process tests drive `Supervisor.step` themselves (as the `stack` command's loop
does); the command-line tests run `python -m sidecar stack` and kill its processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from sidecar.config.envoy import load_catalogue
from sidecar.devstack.processes import check_ports_free, free_ports, terminate
from sidecar.devstack.stack import Child, LocalStack, StackPorts
from sidecar.devstack.supervision import RestartPolicy, Supervisor
from sidecar.errors import StackError
from tests.integration.conftest import LOCAL_CONFIG, START_ATTEMPTS, start_stack

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], what: str, deadline_s: float = 30) -> T:
    """Poll `condition` until it returns something, or fail naming `what`."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        result = condition()
        if result is not None and result is not False:
            return result
        time.sleep(0.05)
    raise AssertionError(f"{what} within {deadline_s:.0f}s")


def route_of(base_url: str) -> str:
    reply = httpx.post(base_url + CHAT, json=BODY, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.headers["x-router-route"]


def alive(pid: int) -> bool:
    """Whether `pid` runs: an exited orphan nobody reaps stays a zombie ('Z')."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry.name))
    return kids


def free_run(count: int) -> int:
    """The first of `count` consecutive loopback ports that are free now."""
    for _ in range(50):
        first = free_ports(1)[0]
        with ExitStack() as probes:
            try:
                for port in range(first, first + count):
                    probe = probes.enter_context(socket.socket())
                    probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return first
    raise AssertionError(f"no {count} consecutive free ports")


@dataclass
class StackCommand:
    """A `python -m sidecar stack` process, the ports it was given and its children."""

    process: subprocess.Popen[bytes]
    stack: LocalStack  # the same config and ports, for names and port owners (never started)
    stderr: Path
    children: list[int]
    workdir: Path | None = None  # the command's temporary directory, read from the sidecar's argv

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def up_or_exited(self) -> bool:
        return self.process.poll() is not None or _answers(self.stack.base_url)


def stack_argv(ports: StackPorts, provider_base_port: int) -> list[str]:
    """The `stack` command line for these ports, quick to start (no classifier)."""
    return [
        sys.executable, "-m", "sidecar", "stack", "--no-semantic",
        "--envoy-config", str(LOCAL_CONFIG),
        "--port", str(ports.listener), "--admin-port", str(ports.admin),
        "--metrics-port", str(ports.envoy_metrics),
        "--sidecar-port", str(ports.sidecar), "--sidecar-admin-port", str(ports.sidecar_admin),
        "--provider-base-port", str(provider_base_port),
    ]  # fmt: skip


def run_stack_command(tmp: Path) -> Iterator[StackCommand]:
    """Start the `stack` command on free ports and wait until Envoy answers; stop it after."""
    catalogue = load_catalogue(LOCAL_CONFIG)
    for attempt in range(1, START_ATTEMPTS + 1):
        base = free_run(len(catalogue.providers))
        providers = {p.cluster: base + i for i, p in enumerate(catalogue.providers)}
        listener, admin, sidecar, sidecar_admin, metrics = free_ports(5)
        ports = StackPorts(listener, admin, sidecar, sidecar_admin, providers, metrics)
        stderr = tmp / f"stack-{attempt}.err"
        with (tmp / f"stack-{attempt}.out").open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(stack_argv(ports, base), stdout=out, stderr=err)
        stack = LocalStack(LOCAL_CONFIG, ports, workdir=tmp / "unused")
        command = StackCommand(process, stack, stderr, [])
        try:
            wait_for(command.up_or_exited, "the stack command's Envoy answering", 120)
            if process.poll() is None:
                command.children = children_of(process.pid)
                command.workdir = _workdir_of(command.children)
                break
            if attempt == START_ATTEMPTS or "already in use" not in command.log():
                raise AssertionError(f"stack exited with {process.returncode}:\n{command.log()}")
        except BaseException:
            _stop(command)
            raise
    try:
        yield command
    finally:
        _stop(command)


def _answers(base_url: str) -> bool:
    try:
        return httpx.get(base_url + "/v1/models", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _workdir_of(pids: list[int]) -> Path | None:
    for pid in pids:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        if "serve" in argv and "--envoy-config" in argv:
            return Path(argv[argv.index("--envoy-config") + 1]).parent
    return None


def _stop(command: StackCommand) -> None:
    """Stop the command (it stops its children); clean up what a killed one left behind."""
    kids = set(command.children) | set(children_of(command.process.pid))
    terminate(command.process, 30)
    for pid in kids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    if command.workdir is not None:
        shutil.rmtree(command.workdir, ignore_errors=True)


@pytest.fixture
def stack_command(tmp_path: Path) -> Iterator[StackCommand]:
    yield from run_stack_command(tmp_path)


def test_a_killed_sidecar_is_restarted_while_envoy_fails_open(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, sidecar_args=("--no-semantic",))
    supervisor = Supervisor(stack, RestartPolicy(time.monotonic))
    try:
        wait_for(lambda: route_of(stack.base_url) != "fallback", "decisions before the kill")
        killed = stack.processes["sidecar"]
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        # Each request takes one supervision step first, as the `stack` loop would.
        end = time.monotonic() + 60
        routes: list[str] = []
        while not routes or routes[-1] == "fallback":
            assert time.monotonic() < end, f"no decision within 60s: {routes}"
            supervisor.step()
            routes.append(route_of(stack.base_url))
        assert routes[0] == "fallback"  # the outage was seen, and answered
        restarted = stack.processes["sidecar"]
        assert restarted.pid != killed.pid and restarted.poll() is None
        assert stack.dead() == []
    finally:
        stack.stop()


def _restarted(stack: LocalStack, supervisor: Supervisor, old: dict[str, int]) -> bool:
    supervisor.step()
    return all(
        stack.processes[name].pid != pid and stack.processes[name].poll() is None
        for name, pid in old.items()
    ) and _answers(stack.base_url)


def test_envoy_and_a_simulator_are_restarted_and_the_workdir_goes() -> None:
    catalogue = load_catalogue(LOCAL_CONFIG)
    for attempt in range(1, START_ATTEMPTS + 1):
        stack = LocalStack(LOCAL_CONFIG, StackPorts.ephemeral(catalogue), quiet=True)
        try:
            stack.start()  # a workdir of its own (none given), removed by stop
            break
        except StackError:
            shutil.rmtree(stack.workdir)  # a failed start keeps it
            if attempt == START_ATTEMPTS:
                raise
    supervisor = Supervisor(stack, RestartPolicy(time.monotonic))
    try:
        workdir = stack.workdir
        assert workdir.is_dir()
        old = {name: stack.processes[name].pid for name in ("envoy", "sim-mid-a")}
        for pid in old.values():
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: _restarted(stack, supervisor, old), "Envoy and sim-mid-a back")
        # A new Envoy opens a new ext_proc connection; on a busy machine its first
        # request may miss the 500 ms message timeout and fall back. Decisions resume.
        wait_for(lambda: route_of(stack.base_url) != "fallback", "decisions through new Envoy")
        # The restarted simulator appended to its predecessor's log (it writes the line
        # just after it starts answering, so wait for it rather than race it).
        log = workdir / "sim-mid-a.log"
        wait_for(
            lambda: log.read_text().count("simulator sim-mid-a serving") == 2,
            "the restarted simulator's log line",
        )
    finally:
        stack.stop()
    assert not workdir.exists()


def test_a_restart_that_never_gets_ready_is_killed_and_retried_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stack = start_stack(tmp_path, sidecar_args=("--no-semantic",))
    real_child = stack.child

    def never_ready(name: str) -> Child:
        child = real_child(name)
        return replace(child, ready=lambda _: False, deadline_s=1) if name == "sim-small" else child

    monkeypatch.setattr(stack, "child", never_ready)
    supervisor = Supervisor(stack, RestartPolicy(time.monotonic))
    try:
        supervisor.step()
        first = stack.processes["sim-small"]
        first.send_signal(signal.SIGKILL)
        first.wait(10)

        def gave_up_on_the_restart() -> subprocess.Popen[bytes] | None:
            supervisor.step()
            restarted = stack.processes["sim-small"]
            return restarted if restarted is not first and restarted.poll() is not None else None

        restarted = wait_for(gave_up_on_the_restart, "the unready restart killed")
        assert restarted.returncode == -signal.SIGKILL
        said = caplog.text
        assert (
            f"sim-small (pid {first.pid}) exited with signal SIGKILL; restarting it in 0.5s" in said
        )
        # Never up in between: the second wait is twice the first.
        assert (
            f"sim-small (pid {restarted.pid}) was not ready within 1s; restarting it in 1.0s"
            in said
        )
    finally:
        stack.stop()


def test_a_failed_start_keeps_the_workdir_and_says_where(tmp_path: Path) -> None:
    catalogue = load_catalogue(LOCAL_CONFIG)
    missing = tmp_path / "missing.yaml"
    stack = LocalStack(
        LOCAL_CONFIG,
        StackPorts.ephemeral(catalogue),
        sidecar_args=("--no-semantic", "--config", str(missing)),
        quiet=True,
    )
    workdir = stack.workdir
    try:
        with pytest.raises(StackError) as caught:
            stack.start()
        assert f"kept in {workdir}" in str(caught.value)
        assert str(missing) in (workdir / "sidecar.log").read_text()
        assert stack.processes == {}
    finally:
        stack.stop()  # nothing left to stop; the workdir stays
        assert workdir.is_dir()
        shutil.rmtree(workdir)


def test_a_port_in_use_is_named_before_anything_starts(tmp_path: Path) -> None:
    catalogue = load_catalogue(LOCAL_CONFIG)
    ports = StackPorts.ephemeral(catalogue)
    stack = LocalStack(LOCAL_CONFIG, ports, quiet=True)
    workdir = stack.workdir
    with socket.socket() as leftover:
        leftover.bind(("127.0.0.1", ports.providers["sim-mid-b"]))
        leftover.listen()
        with pytest.raises(StackError, match=f"port {ports.providers['sim-mid-b']} ") as caught:
            stack.start()
    assert "the simulator sim-mid-b" in str(caught.value)
    assert stack.processes == {}
    assert not workdir.exists()  # nothing in it worth keeping


def test_one_port_for_two_children_is_refused() -> None:
    with pytest.raises(StackError, match="port 5 is given to both the a and the b"):
        check_ports_free([(5, "the a"), (5, "the b")])


def _sidecar_pid(command: StackCommand) -> int | None:
    for pid in children_of(command.process.pid):
        if alive(pid) and b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
            return pid
    return None


def test_the_stack_command_restarts_a_killed_sidecar(stack_command: StackCommand) -> None:
    base_url = stack_command.stack.base_url
    # A cold ext_proc connection may miss the 500 ms timeout on a busy machine.
    wait_for(lambda: route_of(base_url) != "fallback", "decisions from the first sidecar")
    sidecar = _sidecar_pid(stack_command)
    assert sidecar is not None
    os.kill(sidecar, signal.SIGKILL)
    wait_for(lambda: not alive(sidecar), "the sidecar dead")
    assert route_of(base_url) == "fallback"  # Envoy still answers: fail-open
    wait_for(lambda: route_of(base_url) != "fallback", "decisions again")
    restarted = _sidecar_pid(stack_command)
    assert restarted is not None and restarted != sidecar
    said = f"sidecar (pid {sidecar}) exited with signal SIGKILL; restarting it in 0.5s"
    assert said in stack_command.log()
    ready = f"sidecar (pid {restarted}) is ready again after "
    wait_for(lambda: ready in stack_command.log(), "the restart logged")

    # SIGTERM (Ctrl-C alike) stops every child, the restarted one too, and cleans up.
    kids = children_of(stack_command.process.pid)
    stack_command.process.send_signal(signal.SIGTERM)
    assert stack_command.process.wait(60) == 0
    assert not any(alive(pid) for pid in kids)
    assert stack_command.workdir is not None and not stack_command.workdir.exists()


def test_children_die_with_a_killed_stack_command(stack_command: StackCommand) -> None:
    kids = stack_command.children
    assert len(kids) == 2 + len(stack_command.stack.catalogue.providers)
    stack_command.process.kill()
    stack_command.process.wait()
    wait_for(lambda: not any(alive(pid) for pid in kids), "every child gone", deadline_s=15)

    def ports_free() -> bool:
        try:
            check_ports_free(stack_command.stack.port_owners())
        except StackError:
            return False
        return True

    wait_for(ports_free, "every port free", deadline_s=15)


def test_the_stack_command_names_a_port_in_use() -> None:
    with socket.socket() as leftover:
        leftover.bind(("127.0.0.1", 0))
        leftover.listen()
        port = leftover.getsockname()[1]
        listener, sidecar, sidecar_admin, metrics = free_ports(4)
        ports = StackPorts(listener, port, sidecar, sidecar_admin, envoy_metrics=metrics)
        result = subprocess.run(
            stack_argv(ports, free_run(4)), capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 2
    assert result.stderr.startswith(f"inference-router: error: port {port} (for the Envoy admin)")
    assert "already in use" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
