# syntax=docker/dockerfile:1
# Multi-stage: build a wheel with its dependencies, then a slim non-root runtime.
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir --upgrade pip build
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
# NUMBA_CACHE_DIR: the funnel index's compiled kernels are cached there (site-packages is
# read-only to the service user).
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    JOURNEYS_HOST=0.0.0.0 JOURNEYS_PORT=8000 JOURNEYS_LOG_FORMAT=json \
    JOURNEYS_DATA_DIR=/data \
    NUMBA_CACHE_DIR=/data/numba-cache
RUN groupadd --system journeys && useradd --system --gid journeys --home /app journeys \
    && mkdir -p /data && chown journeys:journeys /data
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# Migrations are run by `journeys serve` at start; they live beside alembic.ini.
COPY --chown=journeys:journeys alembic.ini ./
COPY --chown=journeys:journeys migrations ./migrations
USER journeys
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["journeys", "serve"]
