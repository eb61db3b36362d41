"""The pure decision core: request facts, policy, catalogue types, the kNN vote, `decide`.

Standard library and `sidecar.errors` only: no I/O, no clock, no gRPC, HTTP or numpy.
"""
