# archiver as a container job: `archiver run` by default; any other command as arguments
# (`docker run IMAGE backfill --start 2025-01-01 --end 2025-02-01`).
# Configuration comes from the environment (ARCHIVER_*, AZURE_*, AWS_*) or a mounted
# TOML file (ARCHIVER_CONFIG); no credential is baked in. Dependencies are installed
# exactly as pinned in requirements.lock (written by .ci/lock), without resolution.

# --- build the wheel, with a pinned build backend --------------------------------------
FROM python:3.11.14-slim-bookworm AS build

WORKDIR /src
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps setuptools==84.2.1
COPY pyproject.toml README.md ./
COPY archiver ./archiver
RUN pip wheel --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation \
        --wheel-dir /wheels .

# --- the runtime image -----------------------------------------------------------------
FROM python:3.11.14-slim-bookworm

LABEL org.opencontainers.image.title="archiver" \
      org.opencontainers.image.description="Archive Microsoft Graph call logs (PSTN, Direct Routing) into partitioned Parquet" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ARCHIVER_METRICS_PORT=9464

COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --no-deps -r /tmp/requirements.lock \
    && rm /tmp/requirements.lock
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-deps /tmp/wheels/callrec_archiver-*.whl \
    && pip check \
    && rm -rf /tmp/wheels \
    && useradd --system --uid 10001 --user-group --home-dir /data --no-log-init archiver \
    && mkdir -p /data \
    && chown archiver:archiver /data

# A local destination (the default ./archive) lands in /data/archive: mount a volume there.
WORKDIR /data
USER 10001:10001

EXPOSE 9464
# /healthz of the metrics server; no curl in the image, so Python's urllib asks.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('ARCHIVER_METRICS_PORT', '9464').rsplit(':', 1)[-1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

ENTRYPOINT ["archiver"]
CMD ["run"]
