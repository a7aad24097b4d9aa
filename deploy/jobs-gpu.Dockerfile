# The GPU jobs image (`pocketgan-jobs-gpu`): deploy/jobs.Dockerfile plus the `gpu` extra, i.e. the
# CUDA 13 / cuDNN 9 user-space libraries that onnxruntime-gpu's CUDA execution provider loads, as
# NVIDIA's pip wheels (nvidia-cublas, nvidia-cuda-runtime, nvidia-cuda-nvrtc, nvidia-curand,
# nvidia-cufft, nvidia-cudnn-cu13). registry.runtime preloads them (onnxruntime.preload_dlls), so no
# CUDA base image and no LD_LIBRARY_PATH are needed; the node needs only an NVIDIA driver new enough
# for CUDA 13 (R580+) and the NVIDIA container toolkit / device plugin (nvidia.com/gpu).
# Used by the GPU device pools of deploy/k8s/profile (the gpu component). `pocketgan profile
# --provider CUDAExecutionProvider` in it exits 9 and writes nothing if CUDA does not really work.
#
#   docker build -f deploy/jobs-gpu.Dockerfile -t pocketgan-jobs-gpu:0.1.0 .
#   docker run --rm --gpus all pocketgan-jobs-gpu:0.1.0 profile --help
#
# NOT built on the project's CI machine (it has no docker daemon and no GPU): see container.md.
# torch stays the CPU build: compression jobs train on CPU here; only ONNX inference uses the GPU.
FROM python:3.11-slim
RUN useradd --create-home --uid 1000 pocketgan
WORKDIR /app
COPY pyproject.toml README.md ./
COPY registry registry
COPY service service
COPY compression_jobs compression_jobs
COPY pocketgan pocketgan
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu ".[gpu]"
USER 1000
ENV POCKETGAN_CACHE_DIR=/var/cache/pocketgan
ENTRYPOINT ["pocketgan"]
