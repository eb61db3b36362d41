"""The local dev stack (Envoy, sidecar, simulators as child processes) and its clients."""
