"""What a cascade costs the client in latency, measured through the real Envoy, side by side.

One local stack (the shipped `envoy/local.yaml`, `--no-semantic`); the cheapest simulator
(sim-small, 40 ms to the first token, 300 tokens/s) answers half of all prompts shakily,
by hash, so the benchmark knows beforehand which prompts the cascade will escalate. Four
paths, one client, in interleaved rounds (a noisy neighbour weighs on all alike), each
request `max_tokens: 40`:

- **small, no cascade**: the small model asked for by name (never held back);
- **cascade, kept**: `router:cost` on a prompt sim-small answers confidently: the answer is
  held back, judged and returned; the difference to the row above is what holding and
  judging cost;
- **cascade, escalated**: `router:cost` on a prompt sim-small answers shakily: the cheap
  attempt, then the mid tier through Envoy again;
- **mid, no cascade**: the mid model asked for by name, what the escalated request would
  cost had it gone there first.

The escalated row minus (small + mid) is the cascade's own overhead on an escalation;
the sidecar's `inference_router_cascade_check_seconds` histogram gives the judging time
alone (its bucket bounds). Writes bench-results/cascade_latency.json.

Run: .venv/bin/python -m benchmarks.cascade_latency
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.metrics import scrape, sum_by_label
from benchmarks.soak import histogram_quantile
from sidecar.config.envoy import load_catalogue
from sidecar.devstack.stack import LocalStack, StackPorts
from sidecar.simulator.answer import is_shaky

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-results" / "cascade_latency.json"
ROUNDS = 60
SHARE = 0.5
CHAT = "/v1/chat/completions"
PATHS = ("small, no cascade", "cascade, kept", "cascade, escalated", "mid, no cascade")


def _prompts(shaky: bool, count: int) -> list[str]:
    found: list[str] = []
    i = 0
    while len(found) < count:
        prompt = f"Latency check {i}: suggest a name for a small cafe"
        if is_shaky(prompt, seed=0, share=SHARE) is shaky:
            found.append(prompt)
        i += 1
    return found


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered), 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
    }


def run() -> dict[str, object]:
    """The four paths, interleaved; medians and p99 per path, and the judging time."""
    config = ROOT / "envoy" / "local.yaml"
    catalogue = load_catalogue(config)
    small = catalogue.provider("sim-small")
    mid = catalogue.provider("sim-mid-a")
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(
            config,
            StackPorts.ephemeral(catalogue),
            sidecar_args=("--no-semantic",),
            workdir=Path(tmp),
            quiet=True,
            shaky_share={small.cluster: SHARE},
        )
        stack.start()
        try:
            timings = _drive(stack, small.model, mid.model)
            admin = f"http://127.0.0.1:{stack.ports.sidecar_admin}/metrics"
            samples = scrape(admin)
            bounds = sum_by_label(samples, "inference_router_cascade_check_seconds_bucket", "le")
            buckets = {f"le={bound}": count for bound, count in bounds.items()}
            outcomes = sum_by_label(samples, "inference_router_cascade_total", "outcome")
        finally:
            stack.stop()
    rows = {path: _quantiles(values) for path, values in timings.items()}
    kept = rows["cascade, kept"]["p50_ms"] - rows["small, no cascade"]["p50_ms"]
    overhead = rows["cascade, escalated"]["p50_ms"] - (
        rows["small, no cascade"]["p50_ms"] + rows["mid, no cascade"]["p50_ms"]
    )
    result: dict[str, object] = {
        "rounds": ROUNDS,
        "paths": rows,
        "kept_adds_p50_ms": round(kept, 1),
        "escalation_overhead_p50_ms": round(overhead, 1),
        "judging_p50_ms_at_most": histogram_quantile(buckets, 0.5),
        "judging_p99_ms_at_most": histogram_quantile(buckets, 0.99),
        "outcomes": outcomes,
    }
    print(f"\ncascade latency through Envoy, {ROUNDS} rounds, max_tokens 40, one client:")
    for path, row in rows.items():
        print(f"  {path:<20} p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms")
    print(f"  holding + judging a kept answer adds {kept:.1f} ms at the median; an escalation's "
          f"own overhead (beyond both models' time) {overhead:.1f} ms; judging alone "
          f"p50 <= {result['judging_p50_ms_at_most']} ms, p99 <= "
          f"{result['judging_p99_ms_at_most']} ms; outcomes {outcomes}")  # fmt: skip
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    return result


def _drive(stack: LocalStack, small_model: str, mid_model: str) -> dict[str, list[float]]:
    confident, shaky = _prompts(False, ROUNDS + 3), _prompts(True, ROUNDS + 3)
    timings: dict[str, list[float]] = {path: [] for path in PATHS}
    with httpx.Client(base_url=stack.base_url, timeout=60) as client:
        for i in range(ROUNDS + 3):  # the first 3 rounds warm connections up, untimed
            asks = {
                "small, no cascade": (small_model, confident[i]),
                "cascade, kept": ("router:cost", confident[i]),
                "cascade, escalated": ("router:cost", shaky[i]),
                "mid, no cascade": (mid_model, shaky[i]),
            }
            for path, (model, prompt) in asks.items():
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": 40,
                }
                started = time.perf_counter()
                reply = client.post(CHAT, json=body)
                elapsed_ms = (time.perf_counter() - started) * 1000
                if reply.status_code != 200:
                    raise RuntimeError(f"{path}: {reply.status_code} {reply.text[:200]}")
                escalated = ">" in reply.headers.get("x-router-cascade", "")
                if path.startswith("cascade") and escalated != (path == "cascade, escalated"):
                    raise RuntimeError(
                        f"{path}: x-router-cascade {reply.headers.get('x-router-cascade')}"
                    )
                if i >= 3:
                    timings[path].append(elapsed_ms)
    return timings


if __name__ == "__main__":
    run()
