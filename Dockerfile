# cnnserve image. Default: the GPU image, one CUDA version throughout (13: what
# onnxruntime-gpu 1.31.1 is built for; tests/unit/test_cuda_stack.py reads it from the
# wheel). CUDA, cuBLAS, cuDNN, cuFFT, cuRAND come as pip wheels (onnxruntime-gpu's `cuda`
# and `cudnn` extras) on a plain Debian base; only the driver (libcuda.so.1) comes from the
# host, mounted by the NVIDIA container toolkit (NVIDIA_* below ask it to).
# CPU variant (plain onnxruntime, no CUDA wheels):
#   --build-arg ONNXRUNTIME=onnxruntime==1.31.1 --build-arg NVML= --build-arg NVIMGCODEC=
# The image holds the service only: no torch, no export code, no models (mount them at
# /models, or /mnt/models under KServe, and set CNNSERVE_MODEL_REPOSITORY accordingly).
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
ARG ONNXRUNTIME="onnxruntime-gpu[cuda,cudnn]==1.31.1"
# NVML bindings (module pynvml) for the GPU memory metrics; empty for the CPU variant.
ARG NVML=nvidia-ml-py==13.615.71
# nvImageCodec + nvJPEG: JPEGs decoded on the GPU (decode: auto | gpu); empty for the CPU variant.
ARG NVIMGCODEC="nvidia-nvimgcodec-cu13[nvjpeg]==0.9.0.20"
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/cnnserve
COPY pyproject.toml README.md /src/
COPY service /src/service
# onnxruntime and onnxruntime-gpu share one module name: never both in one environment.
RUN /opt/cnnserve/bin/pip install --no-cache-dir /src \
    && /opt/cnnserve/bin/pip uninstall -y onnxruntime \
    && /opt/cnnserve/bin/pip install --no-cache-dir "${ONNXRUNTIME}" \
    && if [ -n "${NVML}" ]; then /opt/cnnserve/bin/pip install --no-cache-dir "${NVML}"; fi \
    && if [ -n "${NVIMGCODEC}" ]; then \
         /opt/cnnserve/bin/pip install --no-cache-dir "${NVIMGCODEC}"; fi

FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin cnnserve \
    && mkdir -p /models /mnt/models
COPY --from=build /opt/cnnserve /opt/cnnserve
# The pip CUDA libraries on the loader's path too (onnxruntime.preload_dlls() also finds
# them beside onnxruntime): ldd of the CUDA provider then resolves all but the driver.
ENV PATH=/opt/cnnserve/bin:$PATH \
    LD_LIBRARY_PATH=/opt/cnnserve/lib/python3.11/site-packages/nvidia/cu13/lib:/opt/cnnserve/lib/python3.11/site-packages/nvidia/cudnn/lib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PYTHONUNBUFFERED=1 \
    CNNSERVE_MODEL_REPOSITORY=/models \
    CNNSERVE_HOST=0.0.0.0 \
    CNNSERVE_PORT=8001 \
    CNNSERVE_HTTP_PORT=8000 \
    CNNSERVE_METRICS_PORT=8002 \
    CNNSERVE_GRACE_PERIOD=30
USER 10001
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["cnnserve", "health", "--url", "127.0.0.1:8001"]
# Exec form: SIGTERM reaches the server itself (graceful drain), not a shell.
ENTRYPOINT ["cnnserve", "serve"]
