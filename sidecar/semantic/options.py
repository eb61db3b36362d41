"""Names of the semantic engine's build options, importable without loading FAISS or ONNX.

The command line offers these as choices; a process that only parses arguments (the
simulator, `check`) must not pay for importing the heavy libraries behind them.
"""

from __future__ import annotations

from typing import Literal

IndexKind = Literal["auto", "flat", "hnsw"]
Projection = Literal["none", "lda"]
Quantize = Literal["auto", "none", "int8"]
"""auto: int8 where the CPU has VNNI (fast and measured as accurate), else fp32 (none)."""
Weights = Literal["fp32", "int8"]
"""The model file a `Quantize` setting resolves to on this CPU (model_store.model_weights)."""
Stage1Mode = Literal["gate", "only", "off"]
"""How eval runs stage 1. gate: stage 1 decides when confident (the sidecar's way); only:
stage 1 decides every prompt (what an overloaded sidecar does); off: every prompt goes to
the encoder."""
