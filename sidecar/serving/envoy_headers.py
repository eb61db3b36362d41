"""Envoy's header maps in ext_proc messages: read them, and write header mutations.

Both ext_proc filters the sidecar serves (the router's and the cascade's) read the
headers Envoy sends and answer with headers to set. Values travel in `raw_value`, never
`value`: Envoy 1.40 sends an empty header for `value` in a mutation. Every header set
here overwrites what is there (a client's copy included).
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

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
