"""Live feeds: what the router learns about providers while it runs (Envoy's health view)."""
