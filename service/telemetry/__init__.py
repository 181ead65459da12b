"""What an operator watches: the Prometheus metrics and the statistics behind Triton's
ModelStatistics (metrics), and GPU memory through NVML (gpu_memory). May import: batching
and below."""
