# Placeholder: the inference issue makes this the real, multi-stage CPU/CUDA image with
# ENTRYPOINT ["seg-predict"]. For now it installs seg with its pinned versions.
FROM python:3.11-slim
WORKDIR /opt/seg
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY seg ./seg
COPY conf ./conf
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -c requirements/constraints.txt torch \
 && pip install --no-cache-dir -c requirements/constraints.txt .
ENV SEG_CONF_DIR=/opt/seg/conf
ENTRYPOINT ["seg-train"]
