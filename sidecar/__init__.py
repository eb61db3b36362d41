"""inference-router: per-request model routing for OpenAI-compatible traffic behind Envoy."""

__version__ = "0.1.0"
