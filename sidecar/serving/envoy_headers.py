"""Envoy's header maps in ext_proc messages: read them, and write header mutations.

Both ext_proc filters the sidecar serves (the router's and the cascade's) read the
headers Envoy sends and answer with headers to set. Values travel in `raw_value`, never
`value`: Envoy 1.40 sends an empty header for `value` in a mutation. Every header set
here overwrites what is there (a client's copy included).

The router's filter skips the headers phase (one message per request instead of two):
what it reads of the headers comes as `request_attributes` with the body, one CEL
expression each (`request.path`, `request.headers['x-router-policy']`, ...), keyed by the
expression's text; a header the request lacks is simply absent.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from sidecar.config.envoy import (
    EXT_PROC_FILTER,
    HEADER_ATTRIBUTE_PREFIX,
    HEADER_ATTRIBUTE_SUFFIX,
    PATH_ATTRIBUTE,
)

OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def set_header(
    headers: RepeatedCompositeFieldContainer[base_pb2.HeaderValueOption], name: str, value: str
) -> None:
    """Append one overwriting header to a mutation's `set_headers`."""
    # Built in place: nested constructors copy every sub-message (7 µs against 18 µs for
    # a decision's five headers).
    option = headers.add(append_action=OVERWRITE)
    option.header.key = name
    option.header.raw_value = value.encode()


def headers_to_dict(header_map: base_pb2.HeaderMap) -> dict[str, str]:
    """Flatten Envoy's header map to lower-case names (later duplicates win)."""
    result: dict[str, str] = {}
    for header in header_map.headers:
        value = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
        result[header.key.lower()] = value
    return result


def headers_from_attributes(attributes: Mapping[str, struct_pb2.Struct]) -> dict[str, str]:
    """The headers a body message's `request_attributes` carry, named as in a header map.

    `request.path` becomes `:path`, `request.headers['x-a']` becomes `x-a`; anything
    else (a number, another expression) is left out.
    """
    fields = attributes[EXT_PROC_FILTER].fields if EXT_PROC_FILTER in attributes else {}
    result: dict[str, str] = {}
    for expression, value in fields.items():
        if value.WhichOneof("kind") != "string_value":
            continue
        name = ":path" if expression == PATH_ATTRIBUTE else None
        prefix, suffix = HEADER_ATTRIBUTE_PREFIX, HEADER_ATTRIBUTE_SUFFIX
        if expression.startswith(prefix) and expression.endswith(suffix):
            name = expression[len(prefix) : -len(suffix)].lower()
        if name is not None:
            result[name] = value.string_value
    return result
