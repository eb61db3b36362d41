"""`make bench`: decision latency and throughput of the sidecar, measured side by side.

Starts real sidecar processes on loopback ports chosen now (semantic routing on, and a
`--no-semantic` baseline), drives them over gRPC the way Envoy does, and prints medians
and p99s. Results also go to bench-results/latest.json. Numbers depend on the machine:
quote them with the machine they came from.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks import envoy_e2e, quality
from benchmarks.extproc_load import LoadResult, drive
from benchmarks.metrics import scrape, sum_by_label
from sidecar.devstack.processes import free_ports, wait_grpc_serving

ROOT = Path(__file__).resolve().parent.parent
SUBJECTS = [
    "my Postgres replica",
    "a React form",
    "our quarterly budget",
    "the Kafka consumer",
    "a birthday speech",
    "my thesis chapter",
    "the billing service",
    "a hiking trip",
]
ASKS = [
    "Can you explain why",
    "Help me figure out how",
    "What is the best way to check if",
    "Give me three ideas on how",
    "Summarise briefly why",
]
ENDS = ["keeps failing after the latest update on Monday", "could be made faster without "
        "rewriting everything", "should change given the new requirements from the team",
        "compares with the usual approach people take"]  # fmt: skip


# (name, extra `serve` arguments); the defaults are measured beside their alternatives.
VARIANTS: tuple[tuple[str, list[str]], ...] = (
    ("semantic", []),
    ("semantic_1thr", ["--config", "ONE_THREAD"]),
    ("semantic_int8", ["--config", "INT8"]),
    ("semantic_q100ms", ["--config", "QUEUE_100"]),
    ("no_semantic", ["--no-semantic"]),
)


def prompts(count: int, seed: int) -> list[str]:
    """Distinct ~30-token prompts (a counter keeps every one unique)."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(ASKS)} {rng.choice(SUBJECTS)} {rng.choice(ENDS)}? (case {i})"
        for i in range(count)
    ]


def classifier_counts(admin: str) -> Counter[str]:
    """Decisions so far by what the classifier did (routed, stage1_routed, shed, unused...)."""
    samples = scrape(f"http://{admin}/metrics")
    counts = sum_by_label(samples, "inference_router_decisions_total", "classifier")
    return Counter({label: int(value) for label, value in counts.items()})


def resident_mib(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_sidecar(extra: list[str], workdir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """A sidecar on fresh ports; returns the process, its gRPC target and admin address."""
    port, admin_port = free_ports(2)
    target = f"127.0.0.1:{port}"
    admin = f"127.0.0.1:{admin_port}"
    log = (workdir / f"sidecar-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "--log-level", "WARNING", "serve",
         "--envoy-config", str(ROOT / "envoy" / "local.yaml"), "--listen", target,
         "--admin-listen", admin, *extra],
        stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    wait_grpc_serving(target, 300, process)
    return process, target, admin


def _phase(
    target: str, admin: str, texts: list[str], streams: int, rate: float | None = None
) -> dict[str, float]:
    before = classifier_counts(admin)
    result: LoadResult = asyncio.run(drive(target, texts, streams, rate))
    after = classifier_counts(admin)
    summary = result.summary()
    done = sum(after.values()) - sum(before.values())

    def share(*labels: str) -> float:
        return sum(after[label] - before[label] for label in labels) / max(done, 1)

    # Classified: by the encoder (stage 2) or by stage 1, confident or under overload.
    summary["stage2_share"] = share("routed", "abstained")
    summary["stage1_share"] = share(
        "stage1_routed", "stage1_abstained", "shed_stage1_routed", "shed_stage1_abstained"
    )
    summary["classified_share"] = summary["stage1_share"] + summary["stage2_share"]
    summary["shed_share"] = share("shed")  # to the default route: nothing classified it
    return summary


def measure(
    target: str, admin: str, seed: int, sequential: int, concurrent: int
) -> dict[str, object]:
    """Warm up, then one-at-a-time, 32 streams, and exact repeats."""
    asyncio.run(drive(target, prompts(64, seed + 99), 4))
    return {
        "sequential": _phase(target, admin, prompts(sequential, seed), 1),
        "concurrent_32": _phase(target, admin, prompts(concurrent, seed + 1), 32),
        "open_60/s": _phase(target, admin, prompts(600, seed + 2), 32, rate=60),
        "open_120/s": _phase(target, admin, prompts(1200, seed + 3), 32, rate=120),
        "cached_repeat": _phase(target, admin, ["hello there, how are you?"] * sequential, 1),
    }


def main() -> int:
    """Run the benchmarks and print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sequential", type=int, default=400)
    parser.add_argument("--concurrent", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "latest.json")
    parser.add_argument("--skip-quality", action="store_true", help="latency only")
    args = parser.parse_args()
    results: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        configs = {}
        alternatives = (
            ("ONE_THREAD", "{threads: 1}"),
            ("INT8", "{quantize: int8}"),
            ("QUEUE_100", "{max_queue_ms: 100}"),
        )
        for key, semantic in alternatives:
            configs[key] = Path(tmp) / f"{key.lower()}.yaml"
            configs[key].write_text(f"envoy_config: {ROOT / 'envoy' / 'local.yaml'}\n"
                                    f"semantic: {semantic}\n")  # fmt: skip
        for name, extra in VARIANTS:
            extra = [configs[a].as_posix() if a in configs else a for a in extra]
            process, target, admin = start_sidecar(extra, Path(tmp))
            try:
                section = measure(target, admin, 7, args.sequential, args.concurrent)
                section["rss_mib"] = resident_mib(process.pid)
                results[name] = section
            finally:
                process.terminate()
                process.wait(30)
    results["envoy_end_to_end"] = envoy_e2e.run()
    if not args.skip_quality:
        results["quality"] = quality.run()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(
        f"\n{'sidecar':<14} {'load':<16} {'p50 ms':>8} {'p99 ms':>8} {'dec/s':>8} "
        f"{'fail':>5} {'classified':>10} {'shed':>6}"
    )
    for name, _ in VARIANTS:
        printed = results[name]
        assert isinstance(printed, dict)
        print(f"{name:<14} resident memory after the run: {printed['rss_mib']:.0f} MiB")
        for load, row in printed.items():
            if not isinstance(row, dict):
                continue
            print(
                f"{name:<14} {load:<16} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
                f"{row['decisions_per_s']:>8.0f} {int(row['failures']):>5} "
                f"{row['classified_share']:>10.0%} {row['shed_share']:>6.0%}"
            )
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
