"""`make bench`: decision latency and throughput of the sidecar, measured side by side.

Starts real sidecar processes on loopback ports chosen now (semantic routing on, and a
`--no-semantic` baseline), drives them over gRPC the way Envoy does, and prints medians
and p99s. Results also go to bench-results/latest.json. Numbers depend on the machine:
quote them with the machine they came from.

Every phase also records the sidecar's CPU seconds per 1,000 decisions (its user + system
time from /proc, all threads, so the encoder's too), the one figure that does not depend
on how busy the rest of the machine was. The default sidecar and the `--no-semantic` one
are also driven at 1, 8, 32 and 128 streams with ~30-token and ~500-token prompts (the
matrix): each cell is bounded by CELL_DECISIONS and CELL_SECONDS, so the matrix costs at
most ~1.5 min per sidecar.
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
from dataclasses import dataclass
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


# The matrix: streams x prompt length, for these sidecars; each cell bounded in count and time.
MATRIX_VARIANTS = ("semantic", "no_semantic")
MATRIX_STREAMS = (1, 8, 32, 128)
CELL_DECISIONS = 2000
CELL_SECONDS = 5.0
# A model the shipped catalogue serves: the client names it, so nothing is classified.
EXPLICIT_MODEL = "llama-3.3-70b-instruct"
LONG_PROMPT_SENTENCES = 24  # ~2,000 characters, ~500 tokens

# (name, extra `serve` arguments); the defaults are measured beside their alternatives.
VARIANTS: tuple[tuple[str, list[str]], ...] = (
    ("semantic", []),
    ("semantic_1thr", ["--config", "ONE_THREAD"]),
    ("semantic_fp32", ["--config", "FP32"]),
    ("semantic_q50ms", ["--config", "QUEUE_50"]),
    ("no_semantic", ["--no-semantic"]),
)


def prompts(count: int, seed: int) -> list[str]:
    """Distinct ~30-token prompts (a counter keeps every one unique)."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(ASKS)} {rng.choice(SUBJECTS)} {rng.choice(ENDS)}? (case {i})"
        for i in range(count)
    ]


def long_prompts(count: int, seed: int) -> list[str]:
    """Distinct ~500-token prompts; the counter at both ends, where the routing text looks."""
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        sentences = (
            f"{rng.choice(ASKS)} {rng.choice(SUBJECTS)} {rng.choice(ENDS)}."
            for _ in range(LONG_PROMPT_SENTENCES)
        )
        texts.append(f"(case {i}) {' '.join(sentences)} (case {i})")
    return texts


def classifier_counts(admin: str) -> Counter[str]:
    """Decisions so far by what the classifier did (routed, stage1_routed, shed, unused...)."""
    samples = scrape(f"http://{admin}/metrics")
    counts = sum_by_label(samples, "inference_router_decisions_total", "classifier")
    return Counter({label: int(value) for label, value in counts.items()})


def resident_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process (`VmHWM`: its peak), from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads (Linux /proc)."""
    # The fields after the command name, which may hold spaces: utime and stime are 14, 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


@dataclass(frozen=True)
class Subject:
    """A running sidecar under test: its process, gRPC target and admin address."""

    pid: int
    target: str
    admin: str


def _phase(
    sidecar: Subject,
    texts: list[str],
    streams: int,
    rate: float | None = None,
    *,
    model: str = "auto",
    seconds: float | None = None,
) -> dict[str, float]:
    before = classifier_counts(sidecar.admin)
    cpu_before = cpu_seconds(sidecar.pid)
    result: LoadResult = asyncio.run(
        drive(sidecar.target, texts, streams, rate, model=model, seconds=seconds)
    )
    cpu = cpu_seconds(sidecar.pid) - cpu_before
    after = classifier_counts(sidecar.admin)
    summary = result.summary()
    summary["cpu_s_per_1k"] = 1000 * cpu / max(len(result.latencies), 1)
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


def measure(sidecar: Subject, seed: int, sequential: int, concurrent: int) -> dict[str, object]:
    """Warm up, then one-at-a-time, 32 streams, and exact repeats."""
    asyncio.run(drive(sidecar.target, prompts(64, seed + 99), 4))
    return {
        "sequential": _phase(sidecar, prompts(sequential, seed), 1),
        "concurrent_32": _phase(sidecar, prompts(concurrent, seed + 1), 32),
        "open_60/s": _phase(sidecar, prompts(600, seed + 2), 32, rate=60),
        "open_120/s": _phase(sidecar, prompts(1200, seed + 3), 32, rate=120),
        "cached_repeat": _phase(sidecar, ["hello there, how are you?"] * sequential, 1),
    }


def matrix(sidecar: Subject, seed: int) -> dict[str, dict[str, dict[str, float]]]:
    """Each stream count with ~30- and ~500-token prompts (`auto`), and an explicit model."""
    asyncio.run(drive(sidecar.target, long_prompts(32, seed + 98), 4))
    cells: dict[str, dict[str, dict[str, float]]] = {}
    for name, make in (("prompt_30_tokens", prompts), ("prompt_500_tokens", long_prompts)):
        cells[name] = {
            str(streams): _phase(
                sidecar, make(CELL_DECISIONS, seed + streams), streams, seconds=CELL_SECONDS
            )
            for streams in MATRIX_STREAMS
        }
    cells["explicit_model"] = {
        str(streams): _phase(
            sidecar,
            prompts(CELL_DECISIONS, seed + 7 * streams),
            streams,
            model=EXPLICIT_MODEL,
            seconds=CELL_SECONDS,
        )
        for streams in (1, 32)
    }
    return cells


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
            ("FP32", "{quantize: none}"),
            ("QUEUE_50", "{max_queue_ms: 50}"),
        )
        for key, semantic in alternatives:
            configs[key] = Path(tmp) / f"{key.lower()}.yaml"
            configs[key].write_text(f"envoy_config: {ROOT / 'envoy' / 'local.yaml'}\n"
                                    f"semantic: {semantic}\n")  # fmt: skip
        for name, extra in VARIANTS:
            extra = [configs[a].as_posix() if a in configs else a for a in extra]
            process, target, admin = start_sidecar(extra, Path(tmp))
            sidecar = Subject(process.pid, target, admin)
            try:
                section = measure(sidecar, 7, args.sequential, args.concurrent)
                if name in MATRIX_VARIANTS:
                    section["matrix"] = matrix(sidecar, 17)
                section["rss_mib"] = resident_mib(process.pid)
                section["peak_rss_mib"] = resident_mib(process.pid, "VmHWM")
                results[name] = section
            finally:
                process.terminate()
                process.wait(30)
    results["envoy_end_to_end"] = envoy_e2e.run()
    if not args.skip_quality:
        results["quality"] = quality.run()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print_tables(results)
    png = args.out.with_name("sidecar_matrix.png")
    plot_matrix(results, png)
    print(f"\nwritten to {args.out} and {png}")
    return 0


def plot_matrix(results: dict[str, object], png: Path) -> None:
    """Decisions/s and p99 by streams, per sidecar and prompt length (the matrix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate_ax, p99_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for variant in MATRIX_VARIANTS:
        section = results.get(variant)
        if not isinstance(section, dict) or "matrix" not in section:
            continue
        for prompt, cells in section["matrix"].items():
            if prompt == "explicit_model":
                continue
            streams = [int(s) for s in cells]
            style = "-" if variant == "semantic" else "--"
            label = f"{variant}, {prompt.replace('prompt_', '').replace('_', ' ')}"
            rate_ax.plot(streams, [c["decisions_per_s"] for c in cells.values()], style,
                         marker="o", label=label)  # fmt: skip
            p99_ax.plot(streams, [c["p99_ms"] for c in cells.values()], style, marker="o",
                        label=label)  # fmt: skip
    for ax, title in ((rate_ax, "decisions per second"), (p99_ax, "p99 ms (log scale)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(MATRIX_STREAMS), [str(n) for n in MATRIX_STREAMS])
        ax.set_xlabel("concurrent ext_proc streams")
        ax.set_title(title)
        ax.legend(fontsize=8)
    p99_ax.set_yscale("log")
    fig.suptitle(f"The sidecar alone over gRPC ({os.cpu_count()} CPUs shared with the client)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _row(name: str, load: str, row: dict[str, float]) -> str:
    return (
        f"{name:<14} {load:<22} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
        f"{row['decisions_per_s']:>8.0f} {int(row['failures']):>5} {row['stage1_share']:>7.0%} "
        f"{row['stage2_share']:>7.0%} {row['shed_share']:>6.0%} {row['cpu_s_per_1k']:>10.2f}"
    )


def print_tables(results: dict[str, object]) -> None:
    """Every phase of every sidecar, then the matrix, one line each."""
    print(
        f"\n{'sidecar':<14} {'load':<22} {'p50 ms':>8} {'p99 ms':>8} {'dec/s':>8} "
        f"{'fail':>5} {'stage 1':>7} {'stage 2':>7} {'shed':>6} {'cpu s/1k':>10}"
    )
    for name, _ in VARIANTS:
        printed = results[name]
        assert isinstance(printed, dict)
        print(
            f"{name:<14} resident memory after the run: {printed['rss_mib']:.0f} MiB "
            f"(peak {printed['peak_rss_mib']:.0f} MiB)"
        )
        for load, row in printed.items():
            if load != "matrix" and isinstance(row, dict):
                print(_row(name, load, row))
        for length, cells in printed.get("matrix", {}).items():
            for streams, row in cells.items():
                print(_row(name, f"{length} x{streams}", row))


if __name__ == "__main__":
    raise SystemExit(main())
