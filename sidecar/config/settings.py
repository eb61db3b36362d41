"""Sidecar-only settings: a short YAML file (optional) plus command-line overrides.

The provider catalogue is not here: it lives in the Envoy YAML (see `sidecar.config.envoy`). This
file holds what only the sidecar needs: ports, the routing table, the semantic model
and index, and limits. Every key is typed and unknown keys are refused, so a typo is an
error that names the key rather than a silently ignored setting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sidecar.config.files import read_yaml_mapping
from sidecar.config.validation import validate
from sidecar.core.cascade import EvaluatorConfig
from sidecar.core.decision import RouteTarget, RoutingTable
from sidecar.core.policy import Policy
from sidecar.core.vote import VoteConfig

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RouteSettings(_Strict):
    """A semantic route's target: a tier or explicit clusters."""

    tier: str | None = None
    clusters: list[str] = Field(default_factory=list)


class SemanticSettings(_Strict):
    """The embedder, the exemplar index and the request-level cache."""

    enabled: bool = True
    index: Path | None = None
    exemplars: Path | None = None
    data_dir: Path | None = None
    onnx_model: Path | None = None
    tokenizer: Path | None = None
    max_tokens: int = Field(default=128, ge=8, le=512)
    # Two intra-op threads measured best on 2 cores (make bench: 1 vs 2 side by side). For
    # int8 one thread is close: the same latency for ~30-token prompts at 6-9 % less CPU
    # per decision, but 1.5x slower on long ones (make bench's semantic_1thr).
    threads: int = Field(default=2, ge=1, le=64)
    # auto: int8 MiniLM where the CPU has VNNI (1.5x faster per prompt, routing quality
    # unchanged within noise: docs/EVALUATION.md), else fp32. Indexes are built per
    # variant: `index build --quantize` must match.
    quantize: Literal["auto", "none", "int8"] = "auto"
    batch_max: int = Field(default=16, ge=1, le=256)
    # 0: a lone request goes straight to the model; under load batches form by themselves
    # while the previous batch runs (see semantic/micro_batcher.py).
    batch_wait_ms: float = Field(default=0.0, ge=0, le=50)
    # Shed load instead of queueing past Envoy's ext_proc message_timeout: when a new
    # prompt would wait longer than this for the model (its own run included), decide
    # without the classifier. 20 ms (room for one prompt ahead) measured best: the same
    # share classified as 50 ms at 120 req/s, 1.6x lower p99 and 1.2-1.3x the throughput
    # at 8 and 32 streams (make bench's alternatives, side by side).
    max_queue_ms: float = Field(default=20.0, gt=0)
    # And while more than this many decision streams are open at once: the sidecar is
    # saturated (its decisions queue for the CPU, Little's law), and one encoder run
    # (6-9 ms of CPU) would make every one of them later. 0: never shed for this.
    encoder_max_streams: int = Field(default=8, ge=0)
    cache_size: int = Field(default=4096, ge=0)
    # Stage 1: static token embeddings distilled from the encoder (built once into the
    # data dir) and the index's stage-1 head. Confident prompts skip the encoder, and an
    # overloaded encoder sheds to stage 1 instead of to the default route.
    stage1: bool = True
    watch_index: bool = True
    # ReloadIndex may read only indexes under this directory (default: the directory
    # holding `index`); other paths are refused, so the API cannot open arbitrary files.
    reload_dir: Path | None = None

    @model_validator(mode="after")
    def _model_needs_tokenizer(self) -> SemanticSettings:
        if (self.onnx_model is None) != (self.tokenizer is None):
            # pydantic's way to report a problem; `validate` turns it into a ConfigError.
            raise ValueError("onnx_model and tokenizer must be given together")
        return self


class PrometheusSourceSettings(_Strict):
    """A Prometheus server that already scrapes the model servers (the fleet source)."""

    # Base URL of the server (its /api/v1/query is asked), e.g. http://prometheus:9090.
    url: str
    # The label whose value is a provider's Envoy cluster name (set by a relabel rule);
    # null: match the `instance` label against the host:port of each `metrics_url`.
    cluster_label: str | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
            raise ValueError(f"want an http(s) URL such as http://prometheus:9090, got {url!r}")
        return url

    @field_validator("cluster_label")
    @classmethod
    def _label_name(cls, label: str | None) -> str | None:
        if label is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", label):
            raise ValueError(f"not a Prometheus label name: {label!r}")
        return label


class LoadFeedSettings(_Strict):
    """Live queue depth: each provider's `metrics_url` (Envoy metadata), or Prometheus."""

    enabled: bool = True
    # `scrape`: read every provider's metrics_url; `prometheus`: one query per interval
    # to a Prometheus that scrapes them already (N sidecars x M servers do not scale).
    source: Literal["scrape", "prometheus"] = "scrape"
    prometheus: PrometheusSourceSettings | None = None
    interval_s: float = Field(default=0.5, gt=0, le=60)
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    # Older facts are not trusted: a stale queue counts as one full batch waiting.
    max_age_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _prometheus_needs_url(self) -> LoadFeedSettings:
        if self.source == "prometheus" and self.prometheus is None:
            raise ValueError("prometheus: required when source is prometheus (its url at least)")
        return self


class PushFeedSettings(_Strict):
    """The push feed: a controller's provider state through the FeedService gRPC API."""

    # Off unless asked for: whoever reaches the gRPC port could mark providers down.
    enabled: bool = False
    # Pushed health, price, TTFT and tokens/s older than this are not trusted (a pushed
    # queue is a load reading and follows load_feed.max_age_s).
    max_age_s: float = Field(default=10.0, gt=0)


class PassiveFeedSettings(_Strict):
    """What real traffic says (Envoy's gRPC access log of upstream attempts, see envoy/)."""

    enabled: bool = True
    # The longest a provider is avoided, whatever its retry-after or reset says.
    max_cooldown_s: float = Field(default=60.0, gt=0)
    # The first wait after a 429 without retry-after or a run of failures; doubles on
    # each further one with no success in between.
    backoff_s: float = Field(default=1.0, gt=0)
    # Failed attempts (5xx, or no answer) in a row that make a provider avoided.
    failure_run: int = Field(default=3, ge=1)
    # Learned latency and error rate older than this are dropped.
    max_age_s: float = Field(default=60.0, gt=0)


class PriceFeedSettings(_Strict):
    """Live prices: an OpenRouter-style models JSON or a {name: {input, output}} table."""

    # http(s) URL or file path; null: the static prices of the Envoy YAML only.
    source: str | None = None
    interval_s: float = Field(default=60.0, gt=0)
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    # Older prices are not trusted: the static price applies and the reason says so.
    max_age_s: float = Field(default=600.0, gt=0)


class EnvoyHealthSettings(_Strict):
    """The live health feed: which providers Envoy itself sees as down (admin /clusters)."""

    enabled: bool = True
    # host:port of Envoy's admin; null: the Envoy YAML's admin.address.socket_address.
    admin: str | None = None
    # Polling a loopback admin twice a second costs nothing measurable; with the local
    # health checks (1 s) a dead provider leaves the decisions within about 2.5 s.
    interval_s: float = Field(default=0.5, gt=0, le=60)
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    # A reading older than this is not trusted: every provider counts as healthy again.
    max_age_s: float = Field(default=5.0, gt=0)

    @field_validator("admin")
    @classmethod
    def _host_and_port(cls, admin: str | None) -> str | None:
        if admin is None:
            return None
        host, colon, port = admin.rpartition(":")
        if not colon or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"want host:port (e.g. 127.0.0.1:9901), got {admin!r}")
        return admin

    @model_validator(mode="after")
    def _age_outlives_interval(self) -> EnvoyHealthSettings:
        if self.max_age_s <= self.interval_s:
            raise ValueError(
                f"max_age_s: must be longer than interval_s ({self.interval_s}), "
                f"or every reading is stale before the next; got {self.max_age_s}"
            )
        return self


class CascadeLearnSettings(_Strict):
    """Learning from outcomes (opt-in): a prompt like an escalated one skips the cheap try."""

    enabled: bool = False
    # The memory file (vectors and tiers, never prompt text); required when enabled.
    path: Path | None = None
    similarity: float = Field(default=0.92, gt=0, le=1)  # cosine, MiniLM vectors
    max_entries: int = Field(default=10_000, ge=1)

    @model_validator(mode="after")
    def _path_when_enabled(self) -> CascadeLearnSettings:
        if self.enabled and self.path is None:
            raise ValueError("path: required when learning is enabled (where the memory lives)")
        return self


class CascadeSettings(_Strict):
    """Model cascading: a cheap model first, its answer judged, a shaky one escalated.

    Needs the Envoy config's `inference_router.cascade` filter and cascade route (both
    shipped Envoy files have them); without them nothing cascades. README "Cascade".
    """

    enabled: bool = True
    # Requests under these policies cascade; an Envoy route can opt in any request with
    # the gRPC metadata x-router-route-cascade: "true".
    policies: list[Policy] = Field(default_factory=lambda: [Policy.COST])
    max_attempts: int = Field(default=2, ge=2, le=5)  # models tried, the first included
    # From the first decision to the answer returned; below the cascade filter's
    # max_message_timeout in the Envoy YAML (checked at start).
    budget_s: float = Field(default=30.0, gt=0, le=600)
    # How answers are judged, and the confidence under which one is escalated.
    evaluator: EvaluatorConfig = Field(default_factory=EvaluatorConfig)
    # A learned scorer (`inference-router cascade train -o FILE`); null: the answer's own
    # signals only (failures, logprobs). Set evaluator.threshold to what training printed.
    scorer: Path | None = None
    # Where escalations are sent; null: the Envoy YAML's openai_api listener.
    envoy_url: str | None = None
    # Ask providers that can (catalogue `logprobs: true`) for token logprobs the client
    # did not ask for; they are removed from the answer it gets.
    ask_logprobs: bool = True
    max_pending: int = Field(default=1024, ge=1)  # answers awaited at once, at most
    learn: CascadeLearnSettings = Field(default_factory=CascadeLearnSettings)


class Settings(_Strict):
    """Everything the sidecar reads at start."""

    envoy_config: Path
    listen: str = "127.0.0.1:50051"
    admin_listen: str = "127.0.0.1:9464"
    tiers: list[str] = Field(default_factory=lambda: ["small", "mid", "frontier"], min_length=1)
    default_route: str = "mid"
    default_policy: Policy = Policy.BALANCED
    routes: dict[str, RouteSettings] = Field(default_factory=dict)
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    # Log each request's routing text with its decision. Off by default: prompts are
    # user data. Secrets (headers) are never logged either way.
    log_prompts: bool = False
    semantic: SemanticSettings = Field(default_factory=SemanticSettings)
    classifier: VoteConfig = Field(default_factory=VoteConfig)
    envoy_health: EnvoyHealthSettings = Field(default_factory=EnvoyHealthSettings)
    load_feed: LoadFeedSettings = Field(default_factory=LoadFeedSettings)
    price_feed: PriceFeedSettings = Field(default_factory=PriceFeedSettings)
    passive_feed: PassiveFeedSettings = Field(default_factory=PassiveFeedSettings)
    push_feed: PushFeedSettings = Field(default_factory=PushFeedSettings)
    cascade: CascadeSettings = Field(default_factory=CascadeSettings)

    def routing_table(self) -> RoutingTable:
        """The part of the settings the decision core routes by."""
        routes = {
            name: RouteTarget(tier=route.tier, clusters=tuple(route.clusters))
            for name, route in self.routes.items()
        }
        return RoutingTable(
            tiers=tuple(self.tiers),
            default_route=self.default_route,
            default_policy=self.default_policy,
            routes=routes,
        )


def load_settings(path: Path | None, overrides: Mapping[str, object]) -> Settings:
    """Read the settings file (if any) and apply overrides, naming any bad key."""
    raw: dict[str, object] = {}
    source = "settings"
    if path is not None:
        source = str(path)
        raw = read_yaml_mapping(path, "settings", empty_ok=True)
        relative_to = path.parent
        for key in ("envoy_config",):
            if isinstance(raw.get(key), str) and not Path(str(raw[key])).is_absolute():
                raw[key] = str(relative_to / str(raw[key]))
    raw.update({key: value for key, value in overrides.items() if value is not None})
    return validate(Settings, raw, source)
