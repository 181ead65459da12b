"""Training and export of CNNs to ONNX model repository entries (needs the export extra)."""
