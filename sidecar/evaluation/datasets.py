"""Labelled data for evaluation: test rows, outcome rows turned into routes, hash splits.

Two kinds of rows exist. A *route row* `{"text", "route"}` says which route a prompt
belongs to (`null`: none, the router should abstain). An *outcome row*
`{"text", "outcomes": {model: quality}}` says how well each model answered it (1.0 right,
0.0 wrong, or a graded score). Outcome rows become exemplars for two-model routing by a
label rule:

- `gain` (default): `strong` if the strong model did better than the weak one, `weak`
  if the weak one did better, `tie` otherwise. The vote's need score
  `(1 + P(strong) - P(weak)) / 2` then estimates the expected quality gain of calling
  the strong model, which is exactly what ranking by need should sort on.
- `strong-wins`: `strong` if the strong model did better, else `weak`.
- `weak-fails`: `strong` if the weak model's quality is below `pass_mark`, else `weak`.

On RouteLLM's GSM8K outcomes `gain` ranks best (docs/EVALUATION.md has the numbers).

Splits are by a hash of the text (salted), so a prompt lands on the same side on every
machine and run, and exemplars and test rows never overlap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from sidecar.config.files import read_jsonl
from sidecar.core.vote import OUT_OF_SCOPE
from sidecar.errors import ConfigError
from sidecar.semantic.exemplars import Exemplar, parse_exemplar

LabelRule = Literal["gain", "strong-wins", "weak-fails"]
STRONG, WEAK, TIE = "strong", "weak", "tie"


@dataclass(frozen=True, slots=True)
class LabelledRow:
    """One test prompt: a gold route (None = out of scope), or per-model outcomes."""

    text: str
    route: str | None = None
    outcomes: Mapping[str, float] | None = None


def parse_row(row: object, where: str) -> LabelledRow:
    """Validate a route row or an outcome row; errors name `where` and the field."""
    if isinstance(row, dict) and "outcomes" in row:
        unknown = sorted(set(row) - {"text", "outcomes", "responses"})
        if unknown:
            raise ConfigError(f"{where}: unknown field {unknown[0]!r}")
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}: field 'text' must be a non-empty string")
        outcomes = row["outcomes"]
        if not isinstance(outcomes, dict) or not outcomes:
            raise ConfigError(f"{where}: field 'outcomes' must be a non-empty object")
        for model, quality in outcomes.items():
            if isinstance(quality, bool) or not isinstance(quality, int | float):
                raise ConfigError(f"{where}: field 'outcomes.{model}' must be a number")
        return LabelledRow(text=text, outcomes={m: float(q) for m, q in outcomes.items()})
    exemplar = parse_exemplar(row, where)
    route = None if exemplar.route == OUT_OF_SCOPE else exemplar.route
    return LabelledRow(text=exemplar.text, route=route)


def load_rows(path: Path) -> list[LabelledRow]:
    """Read a JSONL file of route rows and/or outcome rows."""
    rows = [parse_row(row, where) for where, row in read_jsonl(path)]
    if not rows:
        raise ConfigError(f"{path}: no rows")
    return rows


def quality(row: LabelledRow, model: str) -> float:
    """The row's outcome for `model`; ConfigError if the row does not have it."""
    if row.outcomes is None or model not in row.outcomes:
        known = sorted(row.outcomes or {})
        raise ConfigError(f"a row has no outcome for model {model!r} (it has {known})")
    return row.outcomes[model]


def label_outcome(
    row: LabelledRow, *, weak: str, strong: str, rule: LabelRule = "gain", pass_mark: float = 0.5
) -> str:
    """The route label an outcome row gets under `rule`."""
    weak_q, strong_q = quality(row, weak), quality(row, strong)
    if rule == "gain":
        return STRONG if strong_q > weak_q else WEAK if weak_q > strong_q else TIE
    if rule == "strong-wins":
        return STRONG if strong_q > weak_q else WEAK
    if rule == "weak-fails":
        return STRONG if weak_q < pass_mark else WEAK
    raise ConfigError(f"label rule must be one of {get_args(LabelRule)}, got {rule!r}")


def to_exemplars(
    rows: Sequence[LabelledRow],
    *,
    weak: str | None = None,
    strong: str | None = None,
    rule: LabelRule = "gain",
) -> list[Exemplar]:
    """Exemplars from route rows as they are and from outcome rows by `rule`."""
    exemplars = []
    for row in rows:
        if row.outcomes is None:
            exemplars.append(Exemplar(text=row.text, route=row.route or OUT_OF_SCOPE))
            continue
        if weak is None or strong is None:
            raise ConfigError("outcome rows as exemplars need --weak and --strong model names")
        label = label_outcome(row, weak=weak, strong=strong, rule=rule)
        exemplars.append(Exemplar(text=row.text, route=label))
    return exemplars


def hash_fraction(text: str, salt: str = "") -> float:
    """A stable pseudo-random number in [0, 1) derived from the text."""
    digest = hashlib.sha256(f"{salt}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_by_hash(
    rows: Sequence[LabelledRow], *, holdout: float, salt: str = ""
) -> tuple[list[LabelledRow], list[LabelledRow]]:
    """(exemplar rows, held-out rows): a row is held out when its text hashes below `holdout`.

    Rows with the same text always land on the same side, so no prompt is both.
    """
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"holdout must be strictly between 0 and 1, got {holdout}")
    kept: list[LabelledRow] = []
    held: list[LabelledRow] = []
    for row in rows:
        (held if hash_fraction(row.text, salt) < holdout else kept).append(row)
    if not kept or not held:
        raise ConfigError(f"a holdout of {holdout} leaves one side of the split empty")
    return kept, held
