"""The two schemas: a model's config.yaml (model_config) and the server's settings with
their flags and CNNSERVE_* variables (settings); and a model's signature read from its
ONNX file (signature). May import: tensors."""
