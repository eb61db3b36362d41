# The router sidecar's image: `docker build -t inference-router:latest .` (README: "Container
# image"). The builder runs the same scripts/build-assets.sh steps as `make install`; the
# runtime stage holds the venv (runtime dependencies only) and a data dir built at image
# build time, so the sidecar starts on a read-only root filesystem without writing.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto proto
COPY sidecar sidecar
COPY scripts scripts
# grpcio-tools goes to the builder's own Python, so the runtime venv never holds it.
RUN scripts/build-assets.sh proto python
RUN python -m venv /opt/venv \
	&& /opt/venv/bin/pip install . \
	&& scripts/build-assets.sh deps /opt/venv/bin/python
RUN scripts/build-assets.sh model /opt/venv/bin/python /opt/inference-router/data \
	&& scripts/build-assets.sh index /opt/venv/bin/python /opt/inference-router/data

FROM ${PYTHON_IMAGE}
# INFERENCE_ROUTER_DATA is where sidecar/semantic/model_store.py looks for the model, the
# static table and the default index. ORT_DISABLE_TELEMETRY: ONNX Runtime would otherwise
# try to persist a device id under $HOME and send usage events.
ENV PATH=/opt/venv/bin:$PATH \
	INFERENCE_ROUTER_DATA=/opt/inference-router/data \
	ORT_DISABLE_TELEMETRY=1 \
	PYTHONDONTWRITEBYTECODE=1 \
	PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent router
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/inference-router/data /opt/inference-router/data
USER 10001:10001
# gRPC (ext_proc and the Router API) and the admin HTTP port (/metrics, /readyz, /healthz).
EXPOSE 50051 9464
ENTRYPOINT ["inference-router"]
CMD ["serve"]
