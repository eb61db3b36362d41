"""The provider catalogue, read from the same Envoy YAML that Envoy runs.

Every Envoy cluster that carries `metadata.filter_metadata.inference_router` is a
provider the router may choose. Keeping the catalogue in Envoy's own config means one
source of truth: the router can never name an upstream Envoy does not know, and an
operator edits one file to add a provider.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from sidecar.config.files import read_yaml_mapping
from sidecar.config.validation import validate
from sidecar.core.catalogue import Catalogue, Engine, Price, Provider
from sidecar.errors import ConfigError

METADATA_KEY = "inference_router"
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
# The dynamic metadata namespace the router filter answers a decision's headers in; the
# edge Lua script sets them on the request (metadata_options.receiving_namespaces).
DECISION_NAMESPACE = "inference_router"
# What the router filter reads of a request comes as `request_attributes` with the body,
# one CEL expression each, keyed by its text: the path, and headers by name.
PATH_ATTRIBUTE = "request.path"
HEADER_ATTRIBUTE_PREFIX, HEADER_ATTRIBUTE_SUFFIX = "request.headers['", "']"
# The second ext_proc filter, which a cascading request's route switches on to hand the
# sidecar the buffered answer (README "Cascade").
CASCADE_FILTER = "inference_router.cascade"
# The listener the OpenAI API is served on; a cascade re-sends its escalations to it.
API_LISTENER = "openai_api"


def header_attribute(name: str) -> str:
    """The `request_attributes` expression that carries header `name`."""
    return f"{HEADER_ATTRIBUTE_PREFIX}{name}{HEADER_ATTRIBUTE_SUFFIX}"


class _PriceModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    input: float = Field(ge=0)
    output: float = Field(ge=0)


class _ProviderModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str = Field(min_length=1)
    tier: str = Field(min_length=1)
    price_per_mtok: _PriceModel
    aliases: list[str] = Field(default_factory=list)
    metrics_url: str | None = None
    engine: Engine = "vllm"
    ttft_ms: float = Field(default=300.0, gt=0)
    tokens_per_s: float = Field(default=80.0, gt=0)
    max_concurrency: int = Field(default=64, ge=1)
    logprobs: bool = False


def _provider_from_metadata(cluster: str, raw: object, source: str) -> Provider:
    parsed = validate(
        _ProviderModel,
        raw,
        f"{source}: cluster {cluster!r}",
        section=f"metadata.filter_metadata.{METADATA_KEY}",
    )
    return Provider(
        cluster=cluster,
        model=parsed.model,
        tier=parsed.tier,
        price=Price(parsed.price_per_mtok.input, parsed.price_per_mtok.output),
        aliases=tuple(parsed.aliases),
        metrics_url=parsed.metrics_url,
        engine=parsed.engine,
        ttft_s=parsed.ttft_ms / 1000.0,
        tokens_per_s=parsed.tokens_per_s,
        max_concurrency=parsed.max_concurrency,
        logprobs=parsed.logprobs,
    )


def catalogue_from_envoy_config(config: Mapping[str, object], source: str) -> Catalogue:
    """Build the catalogue from a parsed Envoy bootstrap config."""
    static = config.get("static_resources")
    clusters_raw = static.get("clusters") if isinstance(static, Mapping) else None
    if not isinstance(clusters_raw, list):
        raise ConfigError(f"{source}: static_resources.clusters: missing or not a list")
    providers: list[Provider] = []
    names: set[str] = set()
    for position, cluster in enumerate(clusters_raw):
        if not isinstance(cluster, Mapping) or not isinstance(cluster.get("name"), str):
            raise ConfigError(f"{source}: static_resources.clusters[{position}]: has no name")
        name = str(cluster["name"])
        if name in names:
            raise ConfigError(f"{source}: cluster {name!r} is defined twice")
        names.add(name)
        metadata = cluster.get("metadata")
        filter_metadata = metadata.get("filter_metadata") if isinstance(metadata, Mapping) else None
        if isinstance(filter_metadata, Mapping) and METADATA_KEY in filter_metadata:
            providers.append(_provider_from_metadata(name, filter_metadata[METADATA_KEY], source))
    if not providers:
        raise ConfigError(
            f"{source}: no cluster carries metadata.filter_metadata.{METADATA_KEY}; "
            "the router has no provider to choose"
        )
    return Catalogue(providers=tuple(providers), clusters=frozenset(names), source=source)


# Envoy binds its admin here when told "every address"; the sidecar reads it on loopback.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def admin_address(config: Mapping[str, object], source: str) -> tuple[str, int] | None:
    """Where Envoy's admin listens (host, port), from `admin.address.socket_address`.

    None when the config has no admin TCP address (no admin, or a pipe). A wildcard bind
    address is read on loopback.
    """
    admin = config.get("admin")
    return _socket_address(admin, source, "admin.address.socket_address")


def api_listener_address(config: Mapping[str, object], source: str) -> tuple[str, int] | None:
    """Where Envoy serves the OpenAI API (host, port): the `openai_api` listener's address."""
    static = config.get("static_resources")
    listeners = static.get("listeners") if isinstance(static, Mapping) else None
    for listener in listeners if isinstance(listeners, list) else ():
        if isinstance(listener, Mapping) and listener.get("name") == API_LISTENER:
            key = f"listener {API_LISTENER}: address.socket_address"
            return _socket_address(listener, source, key)
    return None


def _socket_address(holder: object, source: str, key: str) -> tuple[str, int] | None:
    address = holder.get("address") if isinstance(holder, Mapping) else None
    socket = address.get("socket_address") if isinstance(address, Mapping) else None
    if not isinstance(socket, Mapping):
        return None
    host, port = socket.get("address"), socket.get("port_value")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{source}: {key}.address: missing or not a string")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"{source}: {key}.port_value: want a TCP port, got {port!r}")
    return _WILDCARDS.get(host, host), port


def load_envoy_yaml(path: Path) -> dict[str, object]:
    """Read an Envoy YAML file as a mapping, naming the file in any error."""
    return read_yaml_mapping(path, "the Envoy config")


def load_catalogue(path: Path) -> Catalogue:
    """Load and validate the provider catalogue from an Envoy YAML file."""
    return catalogue_from_envoy_config(load_envoy_yaml(path), str(path))


def ext_proc_max_message_timeout_s(
    config: Mapping[str, object], filter_name: str = EXT_PROC_FILTER
) -> float:
    """An ext_proc filter's `max_message_timeout` in seconds (0: Envoy allows no override).

    The sidecar may ask Envoy for this much time on a message it cannot answer within
    `message_timeout` (a body of several MiB; a cascade's escalation); asking for more
    makes Envoy ignore the ask.
    """
    for node in walk_mappings(config):
        if node.get("name") != filter_name:
            continue
        typed = node.get("typed_config")
        raw = typed.get("max_message_timeout") if isinstance(typed, Mapping) else None
        return _duration_s(raw) if raw is not None else 0.0
    return 0.0


def _duration_s(raw: object) -> float:
    """A protobuf Duration as Envoy YAML writes it: "1.5s" (or a mapping of seconds/nanos)."""
    if isinstance(raw, str) and raw.endswith("s"):
        try:
            return float(raw[:-1])
        except ValueError:
            pass
    if isinstance(raw, Mapping):
        return float(raw.get("seconds", 0) or 0) + float(raw.get("nanos", 0) or 0) / 1e9
    raise ConfigError(f"ext_proc max_message_timeout: {raw!r} is not a duration like '2s'")


def walk_mappings(node: object) -> Iterator[dict[str, object]]:
    """Every mapping inside a parsed YAML document, in document order (parents first)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk_mappings(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk_mappings(value)
