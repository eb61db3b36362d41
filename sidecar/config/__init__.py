"""Operator configuration: sidecar settings, the Envoy YAML catalogue loader, file I/O."""
