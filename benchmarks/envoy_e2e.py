"""What the router adds end to end: the same simulator called directly and through Envoy.

Starts the local stack (real Envoy, sidecar, simulators) on fresh ports and drives it with
`hey` (Debian package): requests with `max_tokens: 1` straight to the small simulator,
then through Envoy naming that model explicitly (ext_proc round trip, no embedding), then
through Envoy with `"model": "auto"` (semantic route; `hey` repeats one body, so after the
first request this is the exact-repeat cache path). The difference of the medians is the
router's cost on the request path.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from sidecar.config.envoy import load_catalogue
from sidecar.devstack.stack import LocalStack, StackPorts

ROOT = Path(__file__).resolve().parent.parent
REQUESTS, WORKERS = 1000, 8


def _hey(url: str, body: dict[str, object]) -> dict[str, float]:
    result = subprocess.run(
        ["hey", "-n", str(REQUESTS), "-c", str(WORKERS), "-m", "POST",
         "-T", "application/json", "-d", json.dumps(body), url],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    out = result.stdout

    def seconds(pattern: str) -> float:
        found = re.search(pattern, out)
        if not found:
            raise RuntimeError(f"hey output without {pattern!r}:\n{out}")
        return float(found.group(1))

    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    return {
        "p50_ms": 1000 * seconds(r"50%+ in ([\d.]+) secs"),
        "p99_ms": 1000 * seconds(r"99%+ in ([\d.]+) secs"),
        "requests_per_s": seconds(r"Requests/sec:\s+([\d.]+)"),
        "non_200": float(sum(int(n) for code, n in codes.items() if code != "200")),
    }


def run() -> dict[str, object]:
    """Direct vs through Envoy, one run, side by side."""
    if shutil.which("hey") is None:
        print("envoy end-to-end: skipped, `hey` is not installed (apt-get install hey)")
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        config = ROOT / "envoy" / "local.yaml"
        ports = StackPorts.ephemeral(load_catalogue(config))
        stack = LocalStack(config, ports, workdir=Path(tmp), quiet=True)
        stack.start()
        try:
            small = stack.catalogue.provider("sim-small")
            message = [{"role": "user", "content": "hi, thanks!"}]
            explicit = {"model": small.model, "messages": message, "max_tokens": 1}
            auto = {"model": "auto", "messages": message, "max_tokens": 1}
            direct_url = f"http://127.0.0.1:{ports.providers['sim-small']}/v1/chat/completions"
            envoy_url = f"{stack.base_url}/v1/chat/completions"
            results = {
                "direct_to_simulator": _hey(direct_url, explicit),
                "envoy_explicit_model": _hey(envoy_url, explicit),
                "envoy_auto_cached": _hey(envoy_url, auto),
            }
        finally:
            stack.stop()
    print(f"\nend to end, {REQUESTS} requests, {WORKERS} workers, max_tokens 1 "
          f"(simulator TTFT {small.ttft_s * 1000:.0f} ms):")  # fmt: skip
    for name, row in results.items():
        print(f"  {name:<22} p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
              f"{row['requests_per_s']:7.0f} req/s  non-200 {int(row['non_200'])}")  # fmt: skip
    return dict(results)
