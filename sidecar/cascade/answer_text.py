"""What a plain reading of an answer's text says about it: cheap features for the scorer.

Theory. A model that got a word problem wrong usually shows it in the text: a stated
calculation that is false ("0.40 * 9 * 1040 = 3760"), a final answer that is not a whole
number where the question wants a count, an answer cut off before its conclusion, hedges
("however", "assuming", "approximately") where the model talked itself into a second
reading of the question. None of these needs a model to read, and together with the
answer's embedding they are what the learned scorer (`sidecar.cascade.scorer`) weighs.

Arithmetic is checked, never executed: a statement `EXPR = NUMBER` (plain text, or the
GSM8K-style annotation `<<EXPR=NUMBER>>`) is parsed with `ast` into numbers and the four
operators only, and the value compared with the stated result at the precision the
answer wrote it (one unit of the last digit shown, so "1000 / 3 = 333" is not an error
and "3744 = 3760" is). Anything else in EXPR (names, powers, calls) skips the statement.

The prompt's length rides along: on GSM8K it is the best single predictor of the weak
model failing (AUC 0.60 alone; adding it to the answer's features lifts the features-only
scorer from 0.748 to 0.772, five hash splits).

Everything here is pure and total: any strings in, a fixed-width vector out.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass

_NUMBER = r"\$?\d++(?:,\d{3})*+(?:\.\d+)?+%?"
_TIMES, _DIVIDED = "\u00d7", "\u00f7"  # the multiplication and division signs
_OPERATOR = rf"[-+*/x{_TIMES}{_DIVIDED}]"
# A chain of numbers and operators (parentheses allowed around numbers), "=", a number.
_STATEMENT = re.compile(
    rf"(?<![\w.*/+{_TIMES}{_DIVIDED}-])((?:\({{0,3}}+{_NUMBER}\s*+\){{0,3}}+\s*+{_OPERATOR}\s*+){{1,12}}+"
    rf"\({{0,3}}+{_NUMBER}\s*+\){{0,3}}+)"
    rf"\s*=\s*(-?{_NUMBER})(?!\.?\d|\s*{_OPERATOR}\s*[\d($])"
)
_ANNOTATION = re.compile(r"<<([^<>=]{1,200})=([^<>=]{1,40})>>")
_MARKED_FINAL = re.compile(rf"####\s*(-?{_NUMBER})")
_ANY_NUMBER = re.compile(rf"-?{_NUMBER}")
_HEDGE = re.compile(
    r"\b(however|assum\w*|approximately|actually|but since|can't|cannot|not possible|"
    r"impossible|unclear|round(?:ed|ing)?|estimate\w*|i think|it seems)\b",
    re.IGNORECASE,
)
_MAX_ABS = 1e15  # past this, float rounding makes "wrong" meaningless
# Calculations are looked for in the first this many characters only; a chain is at most
# 12 operators long, parentheses at most 3 deep, and every quantifier is possessive, so the
# regex stays linear on any answer (adversarial ones included: tests/unit).
_MAX_CHECKED_CHARS = 20_000

FEATURE_NAMES = (
    "arithmetic_error",  # at least one false calculation
    "arithmetic_errors",  # log(1 + count of false calculations)
    "calculations",  # log(1 + count of checked calculations)
    "final_marked",  # a "#### N" final answer line
    "final_missing",  # no number anywhere
    "final_fractional",  # the final number is not a whole number
    "final_negative",
    "hedges",  # log(1 + count of hedging words)
    "length",  # log(1 + characters)
    "lines",  # log(1 + line breaks)
    "prompt_length",  # log(1 + characters of the prompt): longer problems fail more often
)
N_FEATURES = len(FEATURE_NAMES)


@dataclass(frozen=True)
class TextReading:
    """The countable facts of one answer text."""

    calculations: int
    false_calculations: int
    final: float | None
    final_marked: bool
    hedges: int
    length: int
    lines: int
    prompt_length: int

    def vector(self) -> list[float]:
        """The facts as scorer inputs, in FEATURE_NAMES order, each roughly within [0, 10]."""
        final = self.final
        return [
            float(self.false_calculations > 0),
            math.log1p(self.false_calculations),
            math.log1p(self.calculations),
            float(self.final_marked),
            float(final is None),
            float(final is not None and final != math.floor(final)),
            float(final is not None and final < 0),
            math.log1p(self.hedges),
            math.log1p(self.length),
            math.log1p(self.lines),
            math.log1p(self.prompt_length),
        ]


def read_answer(prompt: str, text: str) -> TextReading:
    """Count calculations (and false ones), find the final number, count hedges."""
    checked = false = 0
    for expression, stated in _statements(text):
        verdict = _check(expression, stated)
        if verdict is not None:
            checked += 1
            false += not verdict
    final, marked = _final_number(text)
    return TextReading(
        calculations=checked,
        false_calculations=false,
        final=final,
        final_marked=marked,
        hedges=len(_HEDGE.findall(text)),
        length=len(text),
        lines=text.count("\n"),
        prompt_length=len(prompt),
    )


def _statements(text: str) -> list[tuple[str, str]]:
    text = text[:_MAX_CHECKED_CHARS].replace("\\*", "*")  # Markdown-escaped multiplication
    found = [(m.group(1), m.group(2)) for m in _ANNOTATION.finditer(text)]
    plain = _ANNOTATION.sub(" ", text)
    found += [(m.group(1), m.group(2)) for m in _STATEMENT.finditer(plain)]
    return found


def _check(expression: str, stated: str) -> bool | None:
    """True/False: the statement holds at the stated precision; None: not checkable."""
    if "%" in expression or "%" in stated:
        return None  # "(4/20) * 100% = 20%": percent is notation here, not arithmetic
    result = _parse_number(stated)
    value = _evaluate(expression)
    if result is None or value is None or abs(value) > _MAX_ABS:
        return None
    digits = stated.strip().rstrip("%").split(".")
    unit = 10.0 ** -len(digits[1]) if len(digits) == 2 else 1.0
    return abs(value - result) < unit or math.isclose(value, result, rel_tol=1e-9)


def _evaluate(expression: str) -> float | None:
    """The value of numbers, + - * / and parentheses; None for anything else."""
    cleaned = expression.replace("$", "").replace(",", "").replace(_TIMES, "*")
    cleaned = cleaned.replace(_DIVIDED, "/")
    cleaned = re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", cleaned)
    cleaned = re.sub(r"(\d+(?:\.\d+)?)%", r"(\1/100)", cleaned)
    if len(cleaned) > 200:
        return None
    try:
        tree = ast.parse(cleaned.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return _value(tree.body)


def _value(node: ast.expr) -> float | None:
    value = node.value if isinstance(node, ast.Constant) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _value(node.operand)
        return None if inner is None else (-inner if isinstance(node.op, ast.USub) else inner)
    if isinstance(node, ast.BinOp):
        left, right = _value(node.left), _value(node.right)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            return left / right if right != 0 else None
    return None


def _parse_number(text: str) -> float | None:
    cleaned = text.strip().replace("$", "").replace(",", "")
    percent = cleaned.endswith("%")
    try:
        value = float(cleaned.rstrip("%"))
    except ValueError:
        return None
    return value / 100 if percent else value


def _final_number(text: str) -> tuple[float | None, bool]:
    marked = _MARKED_FINAL.findall(text)
    if marked:
        return _parse_number(marked[-1]), True
    numbers = _ANY_NUMBER.findall(text)
    return (_parse_number(numbers[-1]) if numbers else None), False
