"""cnnserve: a KServe v2 gRPC inference service for CNN image models."""

__version__ = "0.1.0"
