"""Exemplar files: valid rows become exemplars; every error names the file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.core.vote import OUT_OF_SCOPE
from sidecar.errors import ConfigError
from sidecar.semantic.exemplars import Exemplar, load_exemplars
from tests.fakes import write_jsonl


def test_load_exemplars_reads_routes_lengths_weights_and_nulls(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "ex.jsonl",
        [
            {"text": "hi", "route": "small"},
            {"text": "prove it", "route": "frontier", "output_tokens": 500, "weight": 2},
            {"text": "off topic", "route": None},
        ],
    )
    assert load_exemplars(path) == [
        Exemplar("hi", "small", None, 1.0),
        Exemplar("prove it", "frontier", 500, 2.0),
        Exemplar("off topic", OUT_OF_SCOPE, None, 1.0),
    ]


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"route": "a"}, "'text'"),
        ({"text": "", "route": "a"}, "'text'"),
        ({"text": "x"}, "'route'"),
        ({"text": "x", "route": 3}, "'route'"),
        ({"text": "x", "route": OUT_OF_SCOPE}, "'route'"),
        ({"text": "x", "route": "a", "output_tokens": "many"}, "'output_tokens'"),
        ({"text": "x", "route": "a", "output_tokens": -1}, "'output_tokens'"),
        ({"text": "x", "route": "a", "weight": 0}, "'weight'"),
        ({"text": "x", "route": "a", "colour": "red"}, "'colour'"),
    ],
)
def test_load_exemplars_errors_name_file_line_and_field(
    tmp_path: Path, row: dict[str, object], field: str
) -> None:
    path = write_jsonl(tmp_path / "ex.jsonl", [{"text": "fine", "route": "a"}, row])
    with pytest.raises(ConfigError) as caught:
        load_exemplars(path)
    assert f"{path}:2:" in str(caught.value)
    assert field in str(caught.value)


def test_load_exemplars_reports_bad_json_and_empty_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "route": "b"}\n{not json\n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl:2: not valid JSON"):
        load_exemplars(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="no exemplars"):
        load_exemplars(empty)
    with pytest.raises(ConfigError, match="cannot read"):
        load_exemplars(tmp_path / "missing.jsonl")
