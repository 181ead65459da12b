#!/usr/bin/env bash
# `make image-test` (CPU variant) / `make image-test-gpu` (the default, GPU image): build the
# real image without a Docker engine and run its health check.
#   1. mmdebstrap makes a Debian bookworm base (no registry needed: Debian's mirror);
#   2. buildah builds ./Dockerfile on it with --isolation chroot (vfs storage);
#   3. gpu: the CUDA provider's libraries all resolve (ldd: only the driver, libcuda.so.1,
#      which the NVIDIA container toolkit mounts from the host, is not found) and
#      onnxruntime.preload_dlls() loads CUDA 13 and cuDNN 9 from the image's pip wheels;
#   4. inside the image: the entrypoint serves ./models (the GPU image on this GPU-less
#      machine: device auto falls back to the CPU), the HEALTHCHECK command must pass, and
#      torch must be absent.
# Needs root and Debian's buildah + mmdebstrap (installed here if missing). CPU ~5 min;
# GPU: 223 s to build here on 2026-12-04 (a 3.11 GB image, mostly the CUDA wheels).
set -euo pipefail
VARIANT=${1:-cpu}
case $VARIANT in
  cpu) BUILD_ARGS=(--build-arg ONNXRUNTIME=onnxruntime==1.31.1 --build-arg NVML= --build-arg NVIMGCODEC=) ;;
  gpu) BUILD_ARGS=() ;;
  *) echo "usage: deploy/image-test.sh [cpu|gpu]" >&2; exit 2 ;;
esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/cnnserve-image}
STORAGE=(--storage-driver vfs --root "$WORK/storage" --runroot "$WORK/run")
mkdir -p "$WORK"
command -v buildah >/dev/null && command -v mmdebstrap >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    buildah mmdebstrap uidmap
}
start=$(date +%s)
if [ ! -f "$WORK/base.tar" ]; then
  mmdebstrap --variant=minbase --include=ca-certificates \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    bookworm "$WORK/base.tar" "deb http://deb.debian.org/debian bookworm main"
fi
base=$(buildah "${STORAGE[@]}" from scratch)
buildah "${STORAGE[@]}" add "$base" "$WORK/base.tar" /
buildah "${STORAGE[@]}" commit --rm "$base" localhost/debian:bookworm-mmdebstrap
# Package downloads trust what this machine trusts (its CA bundle may include a proxy's CA):
# lent to the build steps as volumes, which are not committed to the image.
printf '[global]\ncert = /run/host-ca.crt\n' > "$WORK/pip.conf"
buildah "${STORAGE[@]}" build --isolation chroot \
  --volume /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro \
  --volume "$WORK/pip.conf:/etc/pip.conf:ro" \
  --build-arg BASE_IMAGE=localhost/debian:bookworm-mmdebstrap \
  "${BUILD_ARGS[@]}" -t "localhost/cnnserve:$VARIANT" "$ROOT"
built=$(date +%s)
# chroot isolation shares this machine's network: pick free loopback ports for this run.
read -r GRPC_PORT METRICS_PORT HTTP_PORT < <(python3 -c 'import socket
ports = []
for _ in range(3):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); ports.append(s); 
print(*(s.getsockname()[1] for s in ports))')
ctr=$(buildah "${STORAGE[@]}" from "localhost/cnnserve:$VARIANT")
trap 'buildah "${STORAGE[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
if [ "$VARIANT" = gpu ]; then
  buildah "${STORAGE[@]}" run --isolation chroot "$ctr" -- sh -c '
    set -e
    provider=$(python3 -c "import onnxruntime, pathlib; print(pathlib.Path(onnxruntime.__file__).parent / \"capi/libonnxruntime_providers_cuda.so\")")
    echo "ldd $provider:"
    ldd "$provider" | grep -E "cublas|cudart|curand|cuda\.so" || true
    missing=$(ldd "$provider" | grep "not found" | grep -v "libcuda.so.1" || true)
    if [ -n "$missing" ]; then echo "unresolved: $missing"; exit 1; fi
    python3 -c "
import onnxruntime as ort
from onnxruntime.capi import build_and_package_info as info
ort.preload_dlls()
maps = open(\"/proc/self/maps\").read().split()
loaded = sorted({p.rsplit(\"/\", 1)[-1] for p in maps if \"/nvidia/\" in p})
print(\"onnxruntime-gpu\", ort.__version__, \"built for CUDA\", info.cuda_version)
print(\"preload_dlls loaded:\", \" \".join(loaded))
need = {\"libcudart.so.13\", \"libcublas.so.13\", \"libcublasLt.so.13\", \"libcurand.so.10\", \"libcudnn.so.9\"}
assert need <= set(loaded), need - set(loaded)
assert info.cuda_version.split(\".\")[0] == \"13\"
"
  '
fi
buildah "${STORAGE[@]}" run --isolation chroot -v "$ROOT/models:/models:ro" "$ctr" -- sh -c "
  GRPC_PORT=$GRPC_PORT METRICS_PORT=$METRICS_PORT HTTP_PORT=$HTTP_PORT
"'
  set -e
  if python3 -c "import torch" 2>/dev/null; then echo "torch is in the image"; exit 1; fi
  cnnserve serve --host 127.0.0.1 --port "$GRPC_PORT" --metrics-port "$METRICS_PORT" \
    --http-port "$HTTP_PORT" > /tmp/serve.log 2>&1 &
  server=$!
  trap "kill \$server 2>/dev/null || true" EXIT  # chroot isolation: nothing else reaps it
  for _ in $(seq 120); do grep -q "listening on" /tmp/serve.log && break; sleep 0.5; done
  grep -v INFO /tmp/serve.log
  echo "running as uid $(id -u)"
  cnnserve health --url "127.0.0.1:$GRPC_PORT"
  cnnserve health --url "127.0.0.1:$GRPC_PORT" --service digits
  python3 -c "import urllib.request; urllib.request.urlopen(\"http://127.0.0.1:$HTTP_PORT/v2/health/ready\")"
  echo "REST ready on $HTTP_PORT"
  kill -TERM "$server"
  wait "$server"  # exits 0 after the graceful drain
  echo "server exited 0 on SIGTERM"
'
echo "image-test passed: built in $((built - start)) s, checked in $(( $(date +%s) - built )) s"
buildah "${STORAGE[@]}" images "localhost/cnnserve:$VARIANT"
