# gpufeed worker image: CUDA runtime, gpufeed[cuda12], a non-root user.
#   docker build -t gpufeed .
#   docker run --gpus all -e GPUFEED_REDIS_URL=redis://redis:6379/0 gpufeed
FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04

# Ubuntu's package versions move with its security updates; pinning them here
# would break the build at the next point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/gpufeed \
    PATH=/opt/gpufeed/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# The package is this source tree; its dependencies are bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir ".[cuda12]" \
    && rm -rf /src

RUN useradd --system --create-home --uid 10001 --user-group gpufeed
USER 10001:10001
WORKDIR /home/gpufeed

# Every worker option has a GPUFEED_* variable; these are the image's defaults.
ENV GPUFEED_REDIS_URL=redis://redis:6379/0 \
    GPUFEED_QUEUE=default \
    GPUFEED_OP=echo \
    GPUFEED_BACKEND=auto \
    GPUFEED_LOG_FORMAT=json \
    GPUFEED_METRICS_PORT=9400
EXPOSE 9400

# Healthy while the supervisor answers on its metrics endpoint.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ['GPUFEED_METRICS_PORT'], timeout=4)"]

# SIGTERM drains: in-flight messages are finished and committed within GPUFEED_DRAIN_TIMEOUT_S.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gpufeed"]
CMD ["worker"]
