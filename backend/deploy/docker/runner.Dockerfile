# A runner image: a framework image plus the wml runner, which is the container's entrypoint
# (`python3 -m wml_backend.runner`: it fetches code and data, runs the command, ships logs and
# metrics, stores results). Build one per framework from the repository root, e.g.
#   docker build -f backend/deploy/docker/runner.Dockerfile \
#     --build-arg BASE_IMAGE=pytorch/pytorch:2.4.1-cuda12.4-cudnn9-runtime -t wml-runner-pytorch:2.4 .
#   docker build -f backend/deploy/docker/runner.Dockerfile \
#     --build-arg BASE_IMAGE=tensorflow/tensorflow:2.16.1-gpu -t wml-runner-tensorflow:2.16 .
#   docker build -f backend/deploy/docker/runner.Dockerfile -t wml-runner:latest .      # "custom"
# and name them in WML_K8S_IMAGE_MAP (backend/deploy/config.yaml).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# The runner and the light `from wml_jupyter import run` helper for training code; nothing of
# Jupyter itself. --no-deps for wml_jupyter: its `run` module needs only wml_backend.
RUN --mount=type=bind,source=backend,target=/src/backend,rw \
    python3 -m pip install --no-cache-dir /src/backend "python-dateutil<3"
COPY wml_jupyter /opt/wml/wml_jupyter
ENV PYTHONPATH=/opt/wml PYTHONUNBUFFERED=1 WML_WORK_DIR=/job

WORKDIR /job
ENTRYPOINT ["python3", "-m", "wml_backend.runner"]
