# syntax=docker/dockerfile:1
# The bridge's image: one image for every role (serve, worker, migrate, panel-sim).
#   docker build -t provisioning-bridge .
#   docker run --rm provisioning-bridge secrets new

# --- build: wheels for the bridge and all its dependencies (compilers stay in this stage) ---
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN pip wheel --wheel-dir /wheels .

# --- runtime: the wheels installed, nothing to build with ---
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BRIDGE_HTTP_HOST=0.0.0.0 \
    BRIDGE_HTTP_PORT=8080
# The wheels are mounted for the install only, so they add no layer to the image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels provisioning-bridge
RUN groupadd --system bridge \
 && useradd --system --gid bridge --home-dir /var/lib/bridge --create-home --shell /usr/sbin/nologin bridge
USER bridge
WORKDIR /var/lib/bridge
# 8080: the HTTP server (serve, run); 8081: a worker's own /metrics and /healthz.
EXPOSE 8080 8081
# Liveness of the HTTP roles (serve, run); compose gives worker a check of its own (its
# BRIDGE_WORKER_METRICS_PORT) and switches it off for migrate.
# The slim image has no curl: Python's standard library asks /healthz.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('BRIDGE_HTTP_PORT', '8080'), timeout=4)"]
# The bridge shuts down gracefully on SIGTERM (BRIDGE_SHUTDOWN_GRACE_S); give it longer
# than that before the container is killed (docker stop -t, compose stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["bridge"]
CMD ["serve"]
