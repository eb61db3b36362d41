"""The metric names a Grafana dashboard's PromQL asks for, and the names a scrape exports.

Theory. A panel's `expr` names metrics among much else: functions and aggregations
(`rate(`, `sum by (le) (`), label names inside `{...}` and in `by`/`without`/`on`/
`ignoring`/`group_left`/`group_right` lists, strings, numbers, durations inside `[...]`,
keywords (`and`, `offset`, `bool`), and Grafana's `$variables`. A small lexer splits the
expression into tokens and a walk drops every kind of name that is not a metric: what is
left is an identifier outside braces and brackets that is not followed by `(`, not a
keyword, and not an aggregation operator. An expression with a character PromQL does not
have is an error, so the test cannot pass by skipping what it does not understand.

On the other side, a Prometheus text exposition exports the names on its `# TYPE` lines
and its sample lines; a histogram (or summary) also answers to its `_bucket`, `_sum` and
`_count` series, even before it has a labelled child with samples.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "inference-router.json"

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$\$?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>(?:0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)
        (?:(?:ms|[smhdwy])(?:[0-9]+(?:ms|[smhdwy]))*)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<punct>=~|!~|[!=<>]=|[-+*/%^=<>@(){}\[\],:])
    """,
    re.VERBOSE,
)
# Aggregation operators: `sum by (x) (...)` puts a keyword, not `(`, after the name.
AGGREGATIONS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def tokens(expr: str) -> Iterator[tuple[str, str]]:
    """(kind, text) of each token of a PromQL expression, spaces left out."""
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"PromQL: unexpected {expr[position]!r} at {position} in {expr!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            yield kind, match.group()
        position = match.end()


def metric_names(expr: str) -> frozenset[str]:
    """Every metric an expression selects (names only; label matchers are ignored)."""
    found: set[str] = set()
    items = list(tokens(expr))
    braces = brackets = parens = 0
    skip_list = False  # inside the label list of by/without/on/ignoring/group_*
    for index, (kind, text) in enumerate(items):
        following = items[index + 1][1] if index + 1 < len(items) else ""
        if kind == "punct":
            braces += {"{": 1, "}": -1}.get(text, 0)
            brackets += {"[": 1, "]": -1}.get(text, 0)
            parens += {"(": 1, ")": -1}.get(text, 0)
            if text == ")" and skip_list:
                skip_list = False
            if min(braces, brackets, parens) < 0:
                raise ValueError(f"PromQL: unbalanced {text!r} in {expr!r}")
            continue
        if kind != "ident" or braces or brackets or skip_list:
            continue
        word = text.lower()
        if word in LABEL_LISTS:
            skip_list = following == "("
        elif word in KEYWORDS or following == "(":
            continue  # a keyword, or a function's name
        elif word in AGGREGATIONS and following.lower() in {"by", "without"}:
            continue
        else:
            found.add(text)
    if braces or brackets or parens:
        raise ValueError(f"PromQL: an unclosed brace, bracket or parenthesis in {expr!r}")
    return frozenset(found)


def exported_names(exposition: str) -> frozenset[str]:
    """Every series name a Prometheus text exposition answers to."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind in ("histogram", "summary"):
                names.update(name + suffix for suffix in HISTOGRAM_SERIES)
        elif line and not line.startswith("#"):
            sample = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line)
            if sample is not None:
                names.add(sample.group())
    return frozenset(names)


def dashboard_exprs(dashboard: object) -> list[tuple[str, str]]:
    """(panel title, expr) of every query target of every panel, rows' panels included."""
    if not isinstance(dashboard, dict):
        raise ValueError("a dashboard is a JSON object")
    found: list[tuple[str, str]] = []
    pending = list(dashboard.get("panels", []))
    while pending:
        panel = pending.pop(0)
        pending.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            found.append((str(panel.get("title", "")), str(target["expr"])))
    return found


def load_dashboard(path: Path = DASHBOARD) -> dict[str, object]:
    """The dashboard JSON shipped in the repository."""
    loaded = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: not a JSON object")
    return loaded


def referenced_names(dashboard: object) -> dict[str, set[str]]:
    """Each metric name the dashboard's queries use, with the panels that use it."""
    users: dict[str, set[str]] = {}
    for title, expr in dashboard_exprs(dashboard):
        for name in metric_names(expr):
            users.setdefault(name, set()).add(title)
    return users
