# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target bot    -t ember-bot .          # the chat bot, no torch
#   docker build --target server -t ember-server .       # the model server (torch + transformers)
# TORCH_SPEC / TORCH_INDEX_URL choose the torch build for the server (CPU by default in
# docker-compose's cpu profile; pass a CUDA wheel index for the gpu profile). SERVER_EXTRAS
# picks the extras: "server", or "server,gpu" to add bitsandbytes for --quantize.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 ember && mkdir -p /data && chown ember /data
WORKDIR /app

FROM base AS build
RUN python -m venv /venv
ENV PATH=/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY bot bot
COPY adapters adapters
COPY storage storage
COPY server server
COPY slack slack

FROM build AS build-bot
RUN pip install .

FROM build AS build-server
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=""
ARG SERVER_EXTRAS=server
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; \
    else pip install "$TORCH_SPEC"; fi \
 && pip install ".[$SERVER_EXTRAS]"

FROM base AS bot
COPY --from=build-bot /venv /venv
ENV PATH=/venv/bin:$PATH DATABASE_URL=sqlite:////data/ember-bot.db
USER ember
VOLUME ["/data"]
CMD ["ember-bot", "run"]

FROM base AS server
COPY --from=build-server /venv /venv
ENV PATH=/venv/bin:$PATH HF_HOME=/home/ember/.cache/huggingface
USER ember
EXPOSE 8000
CMD ["ember-bot", "serve", "--host", "0.0.0.0", "--port", "8000", "--preset", "tiny"]
