"""Routing quality on the shared evaluation data, by the same commands docs/EVALUATION.md shows.

CLINC150 (intent routing with out-of-scope prompts): build an LDA index from the
exemplars plus out-of-scope negatives, calibrate thresholds by leave-one-out on the
exemplars only, then evaluate once on dev. RouteLLM GSM8K (weak vs strong model): five
hash splits, 30 % held out each. Skipped, with a message, when the data is absent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
GSM_SEEDS = ("", "1", "2", "3", "4")


def _cli(*args: str) -> str:
    command = [sys.executable, "-m", "sidecar", "--log-level", "WARNING", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def clinc150(workdir: Path) -> dict[str, object]:
    """Index → calibrate (leave-one-out, no dev) → eval on dev."""
    data = DATA / "clinc150"
    index, settings = workdir / "clinc-index", workdir / "clinc.yaml"
    _cli("index", "build", str(data / "exemplars.jsonl"), str(data / "oos_train.jsonl"),
         "-o", str(index), "--projection", "lda", "--quiet")  # fmt: skip
    _cli("calibrate", "--index", str(index), "--settings", str(settings), "--k", "20",
         "--temperature", "0.1", "--target-oos-recall", "0.75", "--confidence", "0.95",
         "--max-route-offset", "0.05", "--quiet")  # fmt: skip
    out = _cli("eval", "--index", str(index), "--test", str(data / "dev.jsonl"),
               "--config", str(settings), "--json", "--quiet")  # fmt: skip
    result: dict[str, object] = json.loads(out)
    return result


def gsm8k() -> list[dict[str, object]]:
    """APGR/CPT on five held-out splits."""
    outcomes = DATA / "routellm-gsm8k" / "outcomes.jsonl"
    runs = []
    for seed in GSM_SEEDS:
        out = _cli("eval", "--split", str(outcomes), "--holdout", "0.3", "--split-seed", seed,
                   "--weak", "mixtral-8x7b-instruct", "--strong", "gpt-4-1106-preview",
                   "--k", "50", "--temperature", "1.0", "--json", "--quiet")  # fmt: skip
        runs.append(json.loads(out)["two_model"] | {"split_seed": seed})
    return runs


def shipped_leave_one_out() -> dict[str, float]:
    """Each shipped exemplar classified by all the others, with the default settings."""
    from sidecar.core.vote import VoteConfig, vote
    from sidecar.semantic.exemplars import load_exemplars, shipped_exemplars
    from sidecar.semantic.index import build_index
    from sidecar.semantic.model_store import load_default_embedder

    tiers = ["small", "mid", "frontier"]
    exemplars = load_exemplars(shipped_exemplars())
    index = build_index(exemplars, load_default_embedder())
    config = VoteConfig()
    verdicts = [vote(n, config) for n in index.self_neighbours(config.k)]
    pairs = list(zip(verdicts, exemplars, strict=True))
    n = len(pairs)
    return {
        "exemplars": float(n),
        "own_tier": sum(v.route == e.route for v, e in pairs) / n,
        "abstained": sum(v.route is None for v, _ in pairs) / n,
        "two_tiers_off": sum(
            v.route is not None and abs(tiers.index(v.route) - tiers.index(e.route)) == 2
            for v, e in pairs
        )
        / n,
    }


def shipped_two_stages(prompt_seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, float]:
    """The default two-stage classifier on the shipped exemplars, by cross-validation.

    Stage 1 from the heads' out-of-fold probabilities, stage 2 from leave-one-out
    neighbours, both with the default `ClassifierConfig`; then the share of the latency
    benchmark's synthetic prompts (`benchmarks.run.prompts`) that stage 1 decides alone.
    """
    from benchmarks.run import prompts  # here: benchmarks.run imports this module
    from sidecar.core.vote import VoteConfig
    from sidecar.evaluation.calibration import score_stages, staged_leave_one_out
    from sidecar.semantic.exemplars import load_exemplars, shipped_exemplars
    from sidecar.semantic.index import build_index
    from sidecar.semantic.model_store import load_default_embedder, load_static_embedder
    from sidecar.semantic.stages import decided_by_stage1, stage1_verdict

    embedder = load_default_embedder()
    static = load_static_embedder(embedder)
    index = build_index(load_exemplars(shipped_exemplars()), embedder, static=static)
    config = VoteConfig()
    score = score_stages(staged_leave_one_out(index, config), config)
    heads = index.heads
    assert heads is not None  # the shipped exemplars always support heads
    texts = [text for seed in prompt_seeds for text in prompts(200, seed)]
    decided = sum(
        decided_by_stage1(stage1_verdict(heads, row, config), config) for row in static.embed(texts)
    )
    return {
        "stage1_gate": float(config.stage1_gate or 0.0),
        "stage1_share": score.stage1_share,
        "stage1_accuracy": score.stage1_accuracy or 0.0,
        "two_stages_accuracy": score.accuracy,
        "stage2_alone_accuracy": score.stage2_accuracy,
        "synthetic_prompts_stage1_share": decided / len(texts),
    }


def run() -> dict[str, object]:
    """Both evaluations, printed as they finish."""
    shipped = shipped_leave_one_out()
    print(f"\nshipped exemplars, leave-one-out: {json.dumps(shipped)}")
    stages = shipped_two_stages()
    print(f"shipped exemplars, two stages by cross-validation: {json.dumps(stages)}")
    if not DATA.is_dir():
        print(f"quality: CLINC150 and GSM8K skipped, {DATA} is absent")
        return {"shipped_leave_one_out": shipped, "shipped_two_stages": stages}
    with tempfile.TemporaryDirectory() as tmp:
        clinc = clinc150(Path(tmp))
    summary = clinc.get("classification", clinc)
    print(f"\nCLINC150 dev: {json.dumps(summary)[:400]}")
    runs = gsm8k()
    print("\nGSM8K held-out (30 %):  seed  APGR   CPT50  CPT80")
    for r in runs:
        print(f"{'':24}{r['split_seed']!s:>4}  {r['apgr']:.3f}  {r['cpt50']:.3f}  {r['cpt80']:.3f}")
    mean = {k: sum(float(str(r[k])) for r in runs) / len(runs) for k in ("apgr", "cpt50", "cpt80")}
    print(f"{'':24}mean  {mean['apgr']:.3f}  {mean['cpt50']:.3f}  {mean['cpt80']:.3f}")
    return {"shipped_leave_one_out": shipped, "shipped_two_stages": stages, "clinc150": clinc,
            "gsm8k": runs, "gsm8k_mean": mean}  # fmt: skip
