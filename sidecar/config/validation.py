"""One place where pydantic's validation errors become the router's ConfigError."""

from __future__ import annotations

from typing import TypeVar

from pydantic import TypeAdapter, ValidationError

from sidecar.errors import ConfigError

T = TypeVar("T")


def validate(kind: type[T], raw: object, source: str, *, section: str = "") -> T:
    """Validate `raw` as `kind` (a pydantic model or dataclass); errors say `source: key: …`.

    `section` is the key path of `raw` inside its file (e.g. "classifier"), so the error
    names the key the operator has to edit.
    """
    try:
        return TypeAdapter(kind).validate_python(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            parts = [str(part) for part in (section, *error["loc"]) if part != ""]
            message = error["msg"].removeprefix("Value error, ")
            # A dataclass's own check says "field: problem"; keep the key path whole.
            field, colon, problem = message.partition(": ")
            if colon and field.isidentifier():
                parts.append(field)
                message = problem
            problems.append(f"{'.'.join(parts) or '(top level)'}: {message}")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from exc
