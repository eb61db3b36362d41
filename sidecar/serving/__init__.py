"""The running sidecar: composition root, routing service, ext_proc and API edges, metrics."""
