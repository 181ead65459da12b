"""Running onnxruntime: the session wrapper (onnx_runner), the Runner and Scheduler
protocols (scheduler), instances: auto timing (autotune), warm-up (warmup), rows on the
model's device (device_rows), heap trimming and the arena cap (heap), thread naming
(threads). May import: configuration and tensors."""
