"""The `inference-router` command line: one module per subcommand."""
