"""A stand-in OpenAI-compatible provider with vLLM-style metrics.

A leaf: it imports nothing of the router (it plays a third-party server), so it keeps
its own small error types and its own copy of the little OpenAI parsing it needs.
"""
