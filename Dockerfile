# The image the k8s/ manifests run. One file, two tags:
#   docker build -t ghcr.io/meddiffuse/meddiffuse-stream:0.1.0-cpu .
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#                -t ghcr.io/meddiffuse/meddiffuse-stream:0.1.0-cuda12.8 .
# The CUDA wheels carry their own CUDA runtime; the node's NVIDIA container runtime supplies the driver, which must be
# 570 or later for CUDA 12.8 (k8s/README.md, "Versions"). Deploy by digest: after pushing,
#   docker buildx imagetools inspect REGISTRY/meddiffuse-stream:TAG   -> images: digest: sha256:... in the overlay.
# The pods run /opt/meddiffuse/launch.py from a ConfigMap (k8s/base): it needs this image's python, torch and the
# meddiffuse-stream console script on PATH (torchrun --no-python meddiffuse-stream).
FROM python:3.12.8-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# Nothing under / is written at run time (the pods' root filesystem is read-only): caches and temporary files
# go to the emptyDir volumes the manifests mount at /tmp and /cache.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/xdg-cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    HF_HUB_OFFLINE=1

WORKDIR /app
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md constraints.txt ./
COPY meddiffuse_stream ./meddiffuse_stream
COPY tools ./tools
# the versions the tests ran with (constraints.txt, made by `make lock`); torch==X there matches X+cu128 too
RUN pip install -c constraints.txt ".[all]" \
    && python -c "import meddiffuse_stream, torch, torch.distributed.run, captum, diffusers, s3fs, torchdata" \
    && meddiffuse-stream --help >/dev/null

# Non-root; the mount points exist and belong to the user so emptyDirs and volumes inherit nothing from root.
RUN groupadd --system --gid 10001 meddiffuse \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --shell /usr/sbin/nologin meddiffuse \
    && mkdir -p /checkpoints /models /cache /data \
    && chown 10001:10001 /checkpoints /models /cache /data
USER 10001:10001

ENTRYPOINT []
CMD ["meddiffuse-stream", "--help"]
