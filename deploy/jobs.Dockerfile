# The jobs image (`pocketgan-jobs`): the whole package, for `pocketgan profile` (and compression
# jobs) in Kubernetes, e.g. the CPU pools of deploy/k8s/profile. The service image is the bento instead
# (`bentoml containerize`), which carries only service/ and registry/.
#
#   docker build -f deploy/jobs.Dockerfile -t pocketgan-jobs:0.1.0 .
#
# NOT built on the project's CI machine (it has a docker client but no daemon): see container.md.
# For a GPU node pool use deploy/jobs-gpu.Dockerfile (the `gpu` extra: CUDA 13 / cuDNN 9 wheels).
FROM python:3.11-slim
RUN useradd --create-home --uid 1000 pocketgan
WORKDIR /app
COPY pyproject.toml README.md ./
COPY registry registry
COPY service service
COPY compression_jobs compression_jobs
COPY pocketgan pocketgan
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu .
USER 1000
ENV POCKETGAN_CACHE_DIR=/var/cache/pocketgan
ENTRYPOINT ["pocketgan"]
