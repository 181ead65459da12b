"""Images on the server: the preprocessing compiled into an ONNX subgraph (preprocess),
PNG/JPEG decoding on the CPU (decode) and on the GPU (device_decode). May import: runtime
and below."""
