"""How well the router predicts a response's length, on RouteLLM GSM8K, against a constant.

Theory. Before a request is sent, the router predicts its output tokens (the expected
cost and latency of every candidate provider depend on it) as the vote-weighted mean of
its nearest exemplars' known `output_tokens` (`sidecar.core.vote`): the same kernel
weights that pick the route, so the closest exemplars count most. That helps only if
prompts that look alike get answers of alike length. RouteLLM's GSM8K rows carry two
models' answers (Mixtral-8x7B and GPT-4), so the claim can be tested: split the prompts
by a hash of the text into exemplars and held-out prompts (`hash_fraction`, the five
splits of `eval --split --split-seed`, so no prompt is on both sides of one), give each
exemplar the token count of a model's answer, and predict each held-out prompt's count
with the real MiniLM embedder, a flat index and `vote`, once per model. The baselines
are what a router without neighbours would use: one constant, the exemplars' median or
mean length. A least-squares line on the prompt's own length is reported beside them as
a pointer, not as something the router does.

Tokens are counted with the MiniLM tokenizer (WordPiece, the only one the router ships),
without truncation or special tokens. The models' own tokenizers give other absolute
numbers; every predictor is scored in the same units, so the comparison holds. Reported
per model and predictor, averaged over the splits: mean absolute error, median absolute
error (tokens), and the share of prompts predicted within a factor of two.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sidecar.config.files import read_jsonl
from sidecar.core.request import bound_routing_text
from sidecar.core.vote import Neighbour, VoteConfig, vote
from sidecar.errors import ConfigError
from sidecar.evaluation.datasets import hash_fraction

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "routellm-gsm8k" / "outcomes.jsonl"
HOLDOUT = 0.3  # as benchmarks/quality.py and README's GSM8K rows
SALTS = ("", "1", "2", "3", "4")  # the same five splits as `eval --split-seed`
# (name, vote settings): the router's defaults, and the wider kernel the GSM8K routing
# rows use (README: k 50, T 1.0).
PREDICTORS: tuple[tuple[str, VoteConfig], ...] = (
    ("knn_router_defaults_k10_t0.1", VoteConfig()),
    ("knn_k50_t1.0", VoteConfig(k=50, temperature=1.0)),
)


@dataclass(frozen=True)
class ResponseRow:
    """A prompt and each model's answer to it."""

    text: str
    responses: Mapping[str, str]


@dataclass(frozen=True)
class LengthErrors:
    """How far predicted output lengths were from the real ones, over `n` prompts."""

    n: int
    mae: float
    median_abs_error: float
    within_2x: float  # share with predicted/actual in [1/2, 2]


def parse_response_row(row: object, where: str) -> ResponseRow:
    """A row with a non-empty `text` and a `responses` object of strings; errors name `where`."""
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    text, responses = row.get("text"), row.get("responses")
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: field 'text' must be a non-empty string")
    if not isinstance(responses, dict) or not responses:
        raise ConfigError(f"{where}: field 'responses' must be a non-empty object")
    for model, answer in responses.items():
        if not isinstance(answer, str):
            raise ConfigError(f"{where}: field 'responses.{model}' must be a string")
    return ResponseRow(text=text, responses=dict(responses))


def load_response_rows(path: Path) -> list[ResponseRow]:
    """Every row of an outcomes JSONL file that carries responses."""
    rows = [parse_response_row(row, where) for where, row in read_jsonl(path)]
    if not rows:
        raise ConfigError(f"{path}: no rows")
    return rows


def split_indices(
    texts: Sequence[str], holdout: float, salt: str = ""
) -> tuple[list[int], list[int]]:
    """(exemplar rows, held-out rows) by position: held out when the text hashes below `holdout`."""
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"holdout must be strictly between 0 and 1, got {holdout}")
    held = [i for i, text in enumerate(texts) if hash_fraction(text, salt) < holdout]
    kept = [i for i, text in enumerate(texts) if hash_fraction(text, salt) >= holdout]
    if not kept or not held:
        raise ConfigError(f"a holdout of {holdout} leaves one side of the split empty")
    return kept, held


def within_factor(predicted: float, actual: float, factor: float = 2.0) -> bool:
    """Whether `predicted` is within `factor` of `actual` (both counted as at least 1 token)."""
    ratio = max(predicted, 1.0) / max(actual, 1.0)
    return 1.0 / factor <= ratio <= factor


def length_errors(predicted: Sequence[float], actual: Sequence[int]) -> LengthErrors:
    """MAE, median absolute error and share within 2x of predictions against real lengths."""
    if len(predicted) != len(actual) or not actual:
        raise ValueError("need one prediction per real length, and at least one")
    errors = [abs(p - a) for p, a in zip(predicted, actual, strict=True)]
    hits = sum(within_factor(p, a) for p, a in zip(predicted, actual, strict=True))
    return LengthErrors(
        n=len(actual),
        mae=statistics.fmean(errors),
        median_abs_error=statistics.median(errors),
        within_2x=hits / len(actual),
    )


def knn_predictions(
    neighbours: Sequence[Sequence[Neighbour]], config: VoteConfig, fallback: float
) -> list[float]:
    """The vote's predicted length per query; `fallback` when no neighbour's length is known."""
    predictions = []
    for row in neighbours:
        predicted = vote(row, config).predicted_output_tokens
        predictions.append(fallback if predicted is None else predicted)
    return predictions


def prompt_length_fit(
    train_prompts: Sequence[int], train_lengths: Sequence[int], prompts: Sequence[int]
) -> list[float]:
    """Least-squares line from prompt tokens to output tokens, applied to `prompts` (>= 1)."""
    fit = statistics.linear_regression(train_prompts, train_lengths)
    return [max(1.0, fit.slope * x + fit.intercept) for x in prompts]


def mean_errors(runs: Sequence[LengthErrors]) -> dict[str, float]:
    """Each metric averaged over several splits."""
    return {
        "mae": statistics.fmean(r.mae for r in runs),
        "median_abs_error": statistics.fmean(r.median_abs_error for r in runs),
        "within_2x": statistics.fmean(r.within_2x for r in runs),
    }


def run(
    data: Path = DATA, holdout: float = HOLDOUT, salts: Sequence[str] = SALTS
) -> dict[str, object]:
    """Embed once, then split, predict and score per split and model; the result as JSON."""
    from sidecar.semantic.corpus import embed_corpus
    from sidecar.semantic.embedder import read_tokenizer
    from sidecar.semantic.exemplars import Exemplar
    from sidecar.semantic.index import build_index_from_vectors
    from sidecar.semantic.model_store import load_default_embedder

    rows = load_response_rows(data)
    texts = [r.text for r in rows]
    models = sorted(set.intersection(*(set(r.responses) for r in rows)))
    embedder = load_default_embedder()
    tokenizer = read_tokenizer(embedder.tokenizer_path)
    tokenizer.no_truncation()
    tokenizer.no_padding()

    def tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    # Exemplars are embedded as `index build` does (the text as it is), queries as the
    # serving path does (bound_routing_text). WordPiece ignores whitespace, so only the
    # prompts that bounding cuts embed differently; only those are embedded twice.
    vectors = embed_corpus(texts, embedder)
    query_vectors = vectors.copy()
    cut = [i for i, t in enumerate(texts) if bound_routing_text(t) != " ".join(t.split())]
    if cut:
        query_vectors[cut] = embed_corpus([bound_routing_text(texts[i]) for i in cut], embedder)
    prompt_tokens = [tokens(t) for t in texts]
    lengths = {m: [tokens(r.responses[m]) for r in rows] for m in models}

    splits: list[dict[str, object]] = []
    per_model: dict[str, dict[str, list[LengthErrors]]] = {m: {} for m in models}
    for salt in salts:
        train, test = split_indices(texts, holdout, salt)
        split: dict[str, object] = {"salt": salt, "exemplars": len(train), "test": len(test)}
        for model in models:
            train_lengths = [lengths[model][i] for i in train]
            actual = [lengths[model][i] for i in test]
            median = float(statistics.median(train_lengths))
            mean = statistics.fmean(train_lengths)
            scores = {
                "constant_train_median": length_errors([median] * len(test), actual),
                "constant_train_mean": length_errors([mean] * len(test), actual),
            }
            exemplars = [
                Exemplar(texts[i], "gsm8k", output_tokens=lengths[model][i]) for i in train
            ]
            index = build_index_from_vectors(
                vectors[train], exemplars, fingerprint=embedder.fingerprint, kind="flat"
            )
            for name, config in PREDICTORS:
                found = index.search(query_vectors[test], config.k)
                scores[name] = length_errors(knn_predictions(found, config, mean), actual)
            fitted = prompt_length_fit(
                [prompt_tokens[i] for i in train], train_lengths, [prompt_tokens[i] for i in test]
            )
            scores["prompt_length_line (not in the router)"] = length_errors(fitted, actual)
            split[model] = {name: asdict(errors) for name, errors in scores.items()}
            for name, errors in scores.items():
                per_model[model].setdefault(name, []).append(errors)
        splits.append(split)
    return {
        "data": str(data),
        "holdout": holdout,
        "tokenizer": "all-MiniLM-L6-v2 WordPiece, no special tokens",
        "median_output_tokens": {m: statistics.median(lengths[m]) for m in models},
        "mean_over_splits": {
            model: {name: mean_errors(runs) for name, runs in by_name.items()}
            for model, by_name in per_model.items()
        },
        "splits": splits,
    }


def print_table(report: Mapping[str, object]) -> None:
    """One line per model and predictor: the means over the splits."""
    splits = report["splits"]
    assert isinstance(splits, list)
    print(
        f"\noutput length on GSM8K, mean of {len(splits)} splits "
        f"({report['holdout']:.0%} held out by text hash; tokens: {report['tokenizer']}):"
    )
    print(f"  {'model':<22} {'predictor':<40} {'MAE':>6} {'median AE':>10} {'within 2x':>10}")
    means = report["mean_over_splits"]
    assert isinstance(means, dict)
    for model, by_name in means.items():
        for name, s in by_name.items():
            print(
                f"  {model:<22} {name:<40} {s['mae']:>6.1f} {s['median_abs_error']:>10.1f} "
                f"{s['within_2x']:>10.0%}"
            )


def main() -> int:
    """Run on the shared data (skipped with a message when it is absent) and save JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--holdout", type=float, default=HOLDOUT)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "output_length.json")
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"output length: skipped, {args.data} is absent")
        return 0
    report = run(args.data, args.holdout)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
