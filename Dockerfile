# syntax=docker/dockerfile:1
# seg-predict in a container: NIfTI volumes or DICOM series in /input -> NIfTI masks (and/or DICOM SEG) in
# /output, model in /model. DICOM: `docker run -v /pacs/export:/input:ro ... seg --output-format both`
#
#   CPU (default):  docker build -t seg .
#   CUDA:           docker build -t seg:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 .
#                   (or another base: --build-arg BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 with python3)
#   model baked in: docker build -t seg:mymodel --build-arg MODEL_DIR=outputs/<experiment>/kfold/<run>/model .
#   no registry (offline machines): a base from Debian's packages, torch from a local wheel folder:
#                   bash scripts/docker_base.sh    # -> seg-base:bookworm
#                   podman build -t seg --build-arg BASE=seg-base:bookworm --build-arg TORCH_INDEX= \
#                     --build-arg WHEELS=/wheels -v /opt/wheels:/wheels:ro .
#                   (behind a TLS-intercepting proxy add --build-arg CA_BUNDLE=/ca.crt -v /etc/ssl/certs/ca-certificates.crt:/ca.crt:ro)
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# a folder of wheels (mounted into the build) that pip may take torch and others from; empty: none
ARG WHEELS=
# a CA bundle (mounted into the build) for pip behind a TLS-intercepting proxy; empty: the base's own
ARG CA_BUNDLE=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
COPY pyproject.toml README.md ./
COPY seg ./seg
# torch first, pinned, from the chosen index (CPU or CUDA build); then seg with the pinned versions
# (WHEELS and CA_BUNDLE as pip's environment, so that pip's build subprocesses see them too)
RUN if [ -n "$WHEELS" ]; then export PIP_FIND_LINKS="$WHEELS"; fi \
 && if [ -n "$CA_BUNDLE" ]; then export PIP_CERT="$CA_BUNDLE"; fi \
 && /opt/venv/bin/pip install ${TORCH_INDEX:+--extra-index-url $TORCH_INDEX} -c requirements/constraints.txt torch \
 && /opt/venv/bin/pip install -c requirements/constraints.txt .

FROM ${BASE} AS runtime
ARG MODEL_DIR=data/no_model
COPY --from=build /opt/venv /opt/venv
COPY ${MODEL_DIR} /model
RUN useradd --create-home --uid 1000 seg && mkdir -p /input /output && chown seg /output
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 MPLCONFIGDIR=/tmp/matplotlib
# seg-predict's defaults for -i/-o/-m: arguments given to `docker run IMAGE ...` replace CMD, so
# `docker run IMAGE --engine onnxruntime` still reads /input, writes /output and loads /model
ENV SEG_INPUT=/input SEG_OUTPUT=/output SEG_MODEL=/model
USER seg
WORKDIR /home/seg
ENTRYPOINT ["seg-predict"]
CMD ["-i", "/input", "-o", "/output", "-m", "/model"]
