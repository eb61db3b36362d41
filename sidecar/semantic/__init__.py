"""The semantic engine: ONNX embedder, micro-batcher, FAISS exemplar index, classifier."""
