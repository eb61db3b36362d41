"""The cascade's answer evaluator on RouteLLM GSM8K: ROC AUC and cost/quality curves.

Theory. A cascade calls the weak model (Mixtral-8x7B) first, scores its answer, and calls
the strong model (GPT-4) only when the score says the answer is shaky; routing decides
from the prompt alone, before any answer exists. Both are rankings of prompts, so both
are measured the way README's GSM8K rows measure routing (RouteLLM's definitions,
`sidecar.evaluation.metrics`): send the x % of held-out prompts ranked most in need to
the strong model, the rest keep the weak answer, and read accuracy against x.

- *cascade alone*: rank by 1 - confidence of `AnswerEvaluator.assess` on the weak
  answer (wrapped as an OpenAI chat response), with the learned scorer trained on the
  split's train side (`train_scorer`: text features + the prompt's MiniLM embedding);
- *routing alone*: the router's kNN need score, k 50, T 1.0, exemplars = the train side
  labelled by the `gain` rule, exactly the README rows (`eval --split`);
- *routing + cascade*: both numbers stacked by a small softmax regression fitted on the
  train side's out-of-sample values only (the scorer's out-of-fold P(correct), the
  routing need score left-one-out), predicting the outcome class of calling the strong
  model (worse / same / better, the `gain` rule); the ranking is
  P(better) - P(worse). A variant predicting "the weak answer is wrong" is reported beside it.

Weak calls: the cascade pays one for every prompt (100 %); routing pays one for every
prompt it does not send to the strong model. For routing + cascade, a prompt whose need
score alone would escalate even the most confident answer seen in training goes straight
to the strong model; the weak-call share at the CPT(80 %) point is reported.

Five splits by text hash (30 % held out, salts "", 1 … 4), as README's GSM8K rows. Writes
bench-results/cascade_quality.json and docs/cascade-gsm8k.png (the mean curves).
About a minute on two cores (57-68 s here), most of it embedding the 1,319 prompts once.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from sidecar.cascade.answer_text import FEATURE_NAMES, read_answer
from sidecar.cascade.evaluator import AnswerEvaluator
from sidecar.cascade.scorer import (
    embedding_text,
    roc_auc,
    threshold_for_escalation,
    train_scorer,
)
from sidecar.config.files import read_jsonl
from sidecar.core.cascade import EvaluatorConfig
from sidecar.core.vote import Neighbour, TwoModel, VoteConfig, vote
from sidecar.evaluation.datasets import (
    STRONG,
    WEAK,
    LabelledRow,
    hash_fraction,
    label_outcome,
)
from sidecar.evaluation.metrics import RoutingCurve, TwoModelMetrics, two_model_metrics
from sidecar.semantic.corpus import embed_corpus
from sidecar.semantic.embedder import Embedder
from sidecar.semantic.exemplars import Exemplar
from sidecar.semantic.index import build_index_from_vectors
from sidecar.semantic.softmax_regression import fit_softmax

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "routellm-gsm8k" / "outcomes.jsonl"
WEAK_MODEL, STRONG_MODEL = "mixtral-8x7b-instruct", "gpt-4-1106-preview"
HOLDOUT = 0.3
SALTS = ("", "1", "2", "3", "4")
ROUTING = VoteConfig(k=50, temperature=1.0, two_model=TwoModel(weak=WEAK, strong=STRONG))
GRID = np.linspace(0.0, 1.0, 101)
TARGET_ESCALATION = 0.3  # the operating point `cascade train` calibrates by default
ROUTED_SHARE = 0.2  # "route 20 % + cascade": the train side's top 20 % by need skip the weak call
METHODS = (
    "routing",
    "cascade",
    "routing+cascade",
    "routing+cascade (weak-wrong)",
    "route 20 % + cascade",
)


@dataclass(frozen=True)
class GsmRow:
    """A prompt, the weak model's answer, and both models' correctness."""

    text: str
    weak_answer: str
    weak: float
    strong: float


def load(path: Path) -> list[GsmRow]:
    """Outcome rows that carry the weak model's answer."""
    rows = []
    for _, raw in read_jsonl(path):
        assert isinstance(raw, dict)
        rows.append(
            GsmRow(
                text=raw["text"],
                weak_answer=raw["responses"][WEAK_MODEL],
                weak=float(raw["outcomes"][WEAK_MODEL]),
                strong=float(raw["outcomes"][STRONG_MODEL]),
            )
        )
    return rows


def chat_bodies(row: GsmRow) -> tuple[dict[str, object], dict[str, object]]:
    """The request and response an OpenAI-compatible provider would have exchanged."""
    request: dict[str, object] = {
        "model": WEAK_MODEL,
        "messages": [{"role": "user", "content": row.text}],
    }
    message = {"role": "assistant", "content": row.weak_answer}
    response: dict[str, object] = {
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]
    }
    return request, response


@dataclass(frozen=True)
class Split:
    """Everything measured on one hash split."""

    salt: str
    test_rows: int
    weak_accuracy: float
    strong_accuracy: float
    auc: dict[str, float]
    metrics: dict[str, TwoModelMetrics]
    curves: dict[str, RoutingCurve]
    routed_share: float  # of "route 20 % + cascade": the held-out prompts that skip the weak call
    operating_point: dict[str, float]  # cascade alone at the threshold chosen on the train side
    stacked_weak_calls_at_cpt80: float | None
    scorer_l2: float


def need_scores(
    vectors: npt.NDArray[np.float32], rows: Sequence[GsmRow], train: list[int], test: list[int]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The kNN need score: leave-one-out on the train side, and on the held-out prompts."""
    labelled = [
        LabelledRow(text=rows[i].text, outcomes={"w": rows[i].weak, "s": rows[i].strong})
        for i in train
    ]
    exemplars = [
        Exemplar(text=r.text, route=label_outcome(r, weak="w", strong="s")) for r in labelled
    ]
    index = build_index_from_vectors(vectors[train], exemplars, fingerprint="bench", kind="flat")

    def needs(found: Sequence[tuple[Neighbour, ...]]) -> npt.NDArray[np.float64]:
        scores = [vote(n, ROUTING).need_score for n in found]
        return np.array([0.5 if s is None else s for s in scores], dtype=np.float64)

    return needs(index.self_neighbours(ROUTING.k)), needs(index.search(vectors[test], ROUTING.k))


Stack = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]


def fit_stack(
    train_inputs: npt.NDArray[np.float64], train_labels: npt.NDArray[np.int64], n_classes: int
) -> Stack:
    """A softmax regression on standardised inputs: rows of inputs in, class probabilities out."""
    mean, spread = train_inputs.mean(axis=0), train_inputs.std(axis=0) + 1e-9
    model = fit_softmax(
        ((train_inputs - mean) / spread).astype(np.float32), train_labels, n_classes, l2=1e-4
    )

    def probabilities(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.asarray(model.probabilities(((x - mean) / spread).astype(np.float32)), float)

    return probabilities


def _expected_gain(probabilities: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """P(strong better) - P(weak better) from the stack's (worse, same, better) classes."""
    return probabilities[:, 2] - probabilities[:, 0]


def _logit(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    clipped = np.clip(p, 1e-4, 1 - 1e-4)
    return np.asarray(np.log(clipped / (1 - clipped)), dtype=np.float64)


def measure_split(
    rows: Sequence[GsmRow], vectors: npt.NDArray[np.float32], fingerprint: str, salt: str
) -> Split:
    """Train the scorer and the stack on one side of the split, measure on the other."""
    held = [hash_fraction(row.text, salt) < HOLDOUT for row in rows]
    train = [i for i, h in enumerate(held) if not h]
    test = [i for i, h in enumerate(held) if h]
    weak_q = np.array([rows[i].weak for i in test])
    strong_q = np.array([rows[i].strong for i in test])
    trained = train_scorer(
        [rows[i].text for i in train],
        [rows[i].weak_answer for i in train],
        [rows[i].weak >= 0.5 for i in train],
        embeddings=vectors[train],
        embed_text="prompt",
        embedder_fingerprint=fingerprint,
    )
    evaluator = AnswerEvaluator(EvaluatorConfig(), trained.scorer)
    confidence = np.array(
        [evaluator.assess(*chat_bodies(rows[i]), vectors[i]).confidence for i in test]
    )
    features_only = train_scorer(
        [rows[i].text for i in train],
        [rows[i].weak_answer for i in train],
        [rows[i].weak >= 0.5 for i in train],
    ).scorer
    correct = weak_q >= 0.5
    auc = {
        "scorer (features + prompt embedding)": roc_auc(confidence, correct),
        "scorer (features only)": roc_auc(
            [features_only.probability(rows[i].text, rows[i].weak_answer) for i in test], correct
        ),
    }
    auc |= feature_aucs(rows, train, test)
    train_need, test_need = need_scores(vectors, rows, train, test)
    auc["routing need score (prompt only)"] = roc_auc(-test_need, correct)
    # Stack: inputs [logit P(correct), need]; the train side's inputs are out-of-sample.
    train_inputs = np.column_stack([_logit(trained.out_of_fold), train_need])
    test_inputs = np.column_stack([_logit(confidence), test_need])
    gain = np.array([rows[i].strong - rows[i].weak for i in train])
    gain_class = np.where(gain > 0, 2, np.where(gain < 0, 0, 1)).astype(np.int64)
    by_gain = fit_stack(train_inputs, gain_class, 3)
    weak_wrong = np.array([int(rows[i].weak < 0.5) for i in train], dtype=np.int64)
    by_wrong = fit_stack(train_inputs, weak_wrong, 2)(test_inputs)
    # The need cut is chosen on the train side; held-out prompts above it go straight to
    # strong (ranked first), the rest are cascaded by confidence.
    routed = test_need >= np.quantile(train_need, 1.0 - ROUTED_SHARE)
    scores = {
        "routing": test_need,
        "cascade": 1.0 - confidence,
        "routing+cascade": _expected_gain(by_gain(test_inputs)),
        "routing+cascade (weak-wrong)": by_wrong[:, 1],
        "route 20 % + cascade": np.where(routed, 2.0 + test_need, 1.0 - confidence),
    }
    # The deployable operating point: the threshold escalating TARGET_ESCALATION of the
    # train side's out-of-fold answers (what `cascade train` reports), applied held out.
    threshold = threshold_for_escalation(trained.out_of_fold, TARGET_ESCALATION)
    escalated = confidence < threshold
    accuracy = float(np.where(escalated, strong_q, weak_q).mean())
    gap = float(strong_q.mean() - weak_q.mean())
    point = {
        "threshold": threshold,
        "strong_share": float(escalated.mean()),
        "accuracy": accuracy,
        "pgr": (accuracy - float(weak_q.mean())) / gap,
    }
    metrics, curves = {}, {}
    for name, score in scores.items():
        metrics[name], curves[name] = two_model_metrics(list(score), list(weak_q), list(strong_q))
    # Escalated whatever the answer: even the most confident answer seen in training would be.
    most_confident = _logit(np.full(len(test), trained.out_of_fold.max()))
    at_ceiling = _expected_gain(by_gain(np.column_stack([most_confident, test_need])))
    return Split(
        salt=salt,
        test_rows=len(test),
        weak_accuracy=float(weak_q.mean()),
        strong_accuracy=float(strong_q.mean()),
        auc=auc,
        metrics=metrics,
        curves=curves,
        routed_share=float(routed.mean()),
        operating_point=point,
        stacked_weak_calls_at_cpt80=_weak_calls(scores["routing+cascade"], at_ceiling, metrics),
        scorer_l2=trained.scorer.l2,
    )


def _weak_calls(
    stacked: npt.NDArray[np.float64],
    straight: npt.NDArray[np.float64],
    metrics: dict[str, TwoModelMetrics],
) -> float | None:
    """Share of prompts that still need the weak call at the stack's CPT(80 %) point."""
    share = metrics["routing+cascade"].cpt80
    if share is None:
        return None
    cut = np.sort(stacked)[::-1][max(0, math.ceil(share * len(stacked)) - 1)]
    return float(np.mean(straight < cut))


def feature_aucs(rows: Sequence[GsmRow], train: list[int], test: list[int]) -> dict[str, float]:
    """Each text feature alone, its direction taken from the train side."""

    def matrix(ids: list[int]) -> npt.NDArray[np.float64]:
        return np.array([read_answer(rows[i].text, rows[i].weak_answer).vector() for i in ids])

    x_train, x_test = matrix(train), matrix(test)
    y_train = np.array([rows[i].weak >= 0.5 for i in train])
    y_test = np.array([rows[i].weak >= 0.5 for i in test])
    out = {}
    for j, name in enumerate(FEATURE_NAMES):
        if np.ptp(x_train[:, j]) == 0:
            continue
        sign = 1.0 if roc_auc(x_train[:, j], y_train) >= 0.5 else -1.0
        out[f"feature: {name}"] = roc_auc(sign * x_test[:, j], y_test)
    return out


def evaluation_latency(
    rows: Sequence[GsmRow], vectors: npt.NDArray[np.float32], embedder: Embedder
) -> dict[str, float]:
    """What evaluating one answer costs on this machine, in microseconds (p50 / p99).

    `assess` alone (text features, scorer, the other signals) over every weak answer (the
    best of three runs of each), and
    one MiniLM call on a prompt, which the sidecar pays only if it has not embedded that
    prompt to route it.
    """
    trained = train_scorer(
        [row.text for row in rows],
        [row.weak_answer for row in rows],
        [row.weak >= 0.5 for row in rows],
        embeddings=vectors,
        embed_text="prompt",
        embedder_fingerprint=embedder.fingerprint,
    )
    evaluator = AnswerEvaluator(EvaluatorConfig(), trained.scorer)
    assess_us = []
    for row, vector in zip(rows, vectors, strict=True):
        request, response = chat_bodies(row)
        best = math.inf
        for _ in range(3):  # best of 3 per answer: the machine is shared with other jobs
            started = time.perf_counter()
            evaluator.assess(request, response, vector)
            best = min(best, time.perf_counter() - started)
        assess_us.append(1e6 * best)
    embed_us = []
    for row in rows[:100]:
        text = evaluator.text_to_embed(*chat_bodies(row))
        started = time.perf_counter()
        embedder.embed([text])
        embed_us.append(1e6 * (time.perf_counter() - started))
    return {
        "assess_p50_us": float(np.percentile(assess_us, 50)),
        "assess_p99_us": float(np.percentile(assess_us, 99)),
        "embed_prompt_p50_us": float(np.percentile(embed_us, 50)),
        "embed_prompt_p99_us": float(np.percentile(embed_us, 99)),
    }


def mean_curve(curves: Sequence[RoutingCurve]) -> list[float]:
    """Accuracy at each GRID share of strong calls, averaged over the splits."""
    return [float(v) for v in np.mean(
        [np.interp(GRID, c.strong_share, c.performance) for c in curves], axis=0
    )]  # fmt: skip


def run(path: Path, embedder: Embedder) -> dict[str, object]:
    """Every split; the report as JSON-ready data."""
    rows = load(path)
    started = time.perf_counter()
    texts = [embedding_text("prompt", row.text, "") for row in rows]
    vectors = embed_corpus(texts, embedder)
    embed_s = time.perf_counter() - started
    splits = [measure_split(rows, vectors, embedder.fingerprint, salt) for salt in SALTS]
    mean: dict[str, dict[str, float | None]] = {}
    for name in METHODS:
        mean[name] = {
            key: _mean([getattr(s.metrics[name], key) for s in splits])
            for key in ("apgr", "cpt50", "cpt80")
        }
    aucs = {key: _mean([s.auc[key] for s in splits]) for key in splits[0].auc}
    latency = evaluation_latency(rows, vectors, embedder)
    return {
        "data": str(path),
        "weak": WEAK_MODEL,
        "strong": STRONG_MODEL,
        "holdout": HOLDOUT,
        "embedder": embedder.fingerprint,
        "embed_seconds": round(embed_s, 1),
        "evaluation_latency": latency,
        "target_escalation": TARGET_ESCALATION,
        "mean_cascade_operating_point": {
            key: _mean([s.operating_point[key] for s in splits])
            for key in ("threshold", "strong_share", "accuracy", "pgr")
        },
        "mean": mean,
        "mean_auc": aucs,
        "mean_weak_calls_at_cpt80": {
            "routing": _mean([1 - (s.metrics["routing"].cpt80 or 1.0) for s in splits]),
            "cascade": 1.0,
            "routing+cascade": _mean([s.stacked_weak_calls_at_cpt80 for s in splits]),
            "route 20 % + cascade": _mean([1 - s.routed_share for s in splits]),
        },
        "mean_curves": {
            "strong_share": [float(x) for x in GRID],
            "weak": _mean([s.weak_accuracy for s in splits]),
            "strong": _mean([s.strong_accuracy for s in splits]),
            **{name: mean_curve([s.curves[name] for s in splits]) for name in METHODS},
        },
        "splits": [
            {
                "split_seed": s.salt,
                "test_rows": s.test_rows,
                "weak": s.weak_accuracy,
                "strong": s.strong_accuracy,
                "scorer_l2": s.scorer_l2,
                "auc": s.auc,
                "metrics": {name: asdict(m) for name, m in s.metrics.items()},
                "stacked_weak_calls_at_cpt80": s.stacked_weak_calls_at_cpt80,
                "routed_share": s.routed_share,
                "cascade_operating_point": s.operating_point,
            }
            for s in splits
        ],
    }


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if len(known) == len(values) and known else None


def print_table(report: dict[str, object]) -> None:
    """The mean APGR / CPT table and the AUCs."""
    mean = report["mean"]
    aucs = report["mean_auc"]
    weak_calls = report["mean_weak_calls_at_cpt80"]
    assert isinstance(mean, dict) and isinstance(aucs, dict) and isinstance(weak_calls, dict)
    print(f"\ncascade on GSM8K, mean of {len(SALTS)} splits ({HOLDOUT:.0%} held out by hash):")
    print(f"  {'method':<30} {'APGR':>6} {'CPT50':>6} {'CPT80':>6}")
    for name in METHODS:
        m = mean[name]
        cells = [
            f"{m[k]:>6.3f}" if m[k] is not None else f"{'-':>6}" for k in ("apgr", "cpt50", "cpt80")
        ]
        print(f"  {name:<30} {' '.join(cells)}")
    print(f"  weak calls at CPT(80 %): {json.dumps(weak_calls)}")
    print(f"  evaluation latency: {json.dumps(report['evaluation_latency'])}")
    point = report["mean_cascade_operating_point"]
    print(f"  cascade at the train-side threshold for {TARGET_ESCALATION:.0%}: {json.dumps(point)}")
    print("  ROC AUC for 'the weak answer is correct':")
    for name, value in aucs.items():
        print(f"    {name:<50} {value:.3f}")


def plot(report: dict[str, object], path: Path) -> None:
    """The mean cost/quality curves as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = report["mean_curves"]
    mean = report["mean"]
    assert isinstance(curves, dict) and isinstance(mean, dict)
    xs = [100 * x for x in curves["strong_share"]]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = {
        "routing": ("tab:blue", "-"),
        "cascade": ("tab:green", "-"),
        "routing+cascade": ("tab:purple", "-"),
        "route 20 % + cascade": ("tab:brown", "--"),
    }
    for name, (color, line) in styles.items():
        label = f"{name} (APGR {mean[name]['apgr']:.2f})"
        ax.plot(xs, curves[name], line, color=color, label=label)
    weak, strong = curves["weak"], curves["strong"]
    ax.plot([0, 100], [weak, strong], ":", color="grey", label="random (APGR 0.5)")
    ax.axhline(weak, linestyle="--", color="tab:orange", label=f"{WEAK_MODEL} alone")
    ax.axhline(strong, linestyle="--", color="tab:red", label=f"{STRONG_MODEL} alone")
    ax.axhline(
        weak + 0.8 * (strong - weak), linestyle="-.", color="silver", label="80 % of the gap"
    )
    ax.set_xlabel(
        "strong model calls (%)\n"
        "weak calls: routing 100 - x %, cascade 100 %, route 20 % + cascade 80 %"
    )
    ax.set_ylabel("accuracy (held-out GSM8K)")
    ax.set_title(f"GSM8K, mean of {len(SALTS)} hash splits: cascade vs routing")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    """Run on the shared data (skipped with a message when it is absent); save JSON and PNG."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "cascade_quality.json")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "cascade-gsm8k.png")
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"cascade quality: skipped, {args.data} is absent")
        return 0
    from sidecar.semantic.model_store import load_default_embedder

    report = run(args.data, load_default_embedder())
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    plot(report, args.png)
    print(f"written to {args.out} and {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
