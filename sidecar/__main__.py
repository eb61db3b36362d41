"""`python -m sidecar` runs the same CLI as the `inference-router` console script."""

from sidecar.cli.main import main

raise SystemExit(main())
