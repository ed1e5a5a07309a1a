# A first image for the archiver (the container issue finishes it: pinned
# dependencies, HEALTHCHECK, `run` as the default command).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY archiver ./archiver
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 archiver

USER 10001
WORKDIR /home/archiver
ENTRYPOINT ["archiver"]
CMD ["status"]
