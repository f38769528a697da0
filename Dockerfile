# syntax=docker/dockerfile:1
# seg-predict in a container: NIfTI volumes in /input -> uint8 NIfTI masks in /output, model in /model.
#
#   CPU (default):  docker build -t seg .
#   CUDA:           docker build -t seg:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 .
#                   (or another base: --build-arg BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 with python3)
#   model baked in: docker build -t seg:mymodel --build-arg MODEL_DIR=outputs/kfold/runs/<run>/model .
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
COPY pyproject.toml README.md ./
COPY seg ./seg
# torch first, pinned, from the chosen index (CPU or CUDA build); then seg with the pinned versions
RUN /opt/venv/bin/pip install --extra-index-url "${TORCH_INDEX}" -c requirements/constraints.txt torch \
 && /opt/venv/bin/pip install -c requirements/constraints.txt .

FROM ${BASE} AS runtime
ARG MODEL_DIR=data/no_model
COPY --from=build /opt/venv /opt/venv
COPY ${MODEL_DIR} /model
RUN useradd --create-home --uid 1000 seg && mkdir -p /input /output && chown seg /output
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 MPLCONFIGDIR=/tmp/matplotlib
USER seg
WORKDIR /home/seg
ENTRYPOINT ["seg-predict"]
CMD ["-i", "/input", "-o", "/output", "-m", "/model"]
