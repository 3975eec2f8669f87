# A runner image: a framework image plus the wml runner, which is the container's entrypoint
# (`python3 -m wml_runner`: it fetches code and data, runs the command, ships logs and
# metrics, stores results). Build one per framework from the repository root, e.g.
#   docker build -f backend/deploy/docker/runner.Dockerfile \
#     --build-arg BASE_IMAGE=pytorch/pytorch:2.4.1-cuda12.4-cudnn9-runtime -t wml-runner-pytorch:2.4 .
#   docker build -f backend/deploy/docker/runner.Dockerfile \
#     --build-arg BASE_IMAGE=tensorflow/tensorflow:2.16.1-gpu -t wml-runner-tensorflow:2.16 .
#   docker build -f backend/deploy/docker/runner.Dockerfile -t wml-runner:latest .      # "custom"
# and name them in WML_K8S_IMAGE_MAP (backend/deploy/config.yaml).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Only the runner distribution (and the core it depends on): no server, no Jupyter. Training
# code's `from wml_jupyter import run` needs two files of the client, copied as they are.
RUN --mount=type=bind,source=backend,target=/src/backend,rw \
    python3 -m pip install --no-cache-dir /src/backend/core /src/backend/runner "python-dateutil<3"
COPY wml_jupyter/__init__.py wml_jupyter/run.py /opt/wml/wml_jupyter/
ENV PYTHONPATH=/opt/wml PYTHONUNBUFFERED=1 WML_WORK_DIR=/job

# The non-root user run pods run as (WML_K8S_RUN_AS_USER; Pod Security "restricted").
RUN (id -u 10001 >/dev/null 2>&1 || useradd --uid 10001 --create-home wml) && mkdir -p /job && chown 10001 /job
USER 10001
WORKDIR /job
ENTRYPOINT ["python3", "-m", "wml_runner"]
