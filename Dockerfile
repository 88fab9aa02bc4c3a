# One image, three entry points: `billing-worker run` (default),
# `billing-worker relay` and `billing-worker migrate`.
#
#   docker build -t billing-worker:local .
#   docker run --rm -e BILLING_DATABASE_URL=... -e BILLING_RABBITMQ_URL=... billing-worker:local migrate
#
# Both stages use the same pinned base so the venv's interpreter path
# (/usr/local/bin/python3.11) exists unchanged in the final image.

# ---- builder: wheels and the virtualenv; pip, build back-ends and sources stay here ----
FROM python:3.11.15-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what the two wheels are built from (hatchling reads README.md as the readme).
COPY contracts/ contracts/
COPY pyproject.toml README.md ./
COPY billing_worker/ billing_worker/
# The local ./contracts satisfies billing-worker's `billing-contracts==0.1.*`.
# No dev extras: no test tools in the image.
RUN pip install --no-cache-dir ./contracts . \
 && billing-worker --help > /dev/null

# ---- runtime ----
FROM python:3.11.15-slim-bookworm AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    BILLING_MIGRATIONS_DIR=/app/migrations

RUN groupadd --system --gid 10001 billing \
 && useradd --system --uid 10001 --gid billing --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin billing

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# Root-owned and read-only for the service user: the code and the migrations are not
# the process's to change.
COPY migrations/ /app/migrations/

USER 10001:10001

# 8080: the webhook relay (`relay`); 9100: the internal metrics/readiness port
# (BILLING_METRICS_PORT), never to be published outside the host's network.
EXPOSE 8080 9100
STOPSIGNAL SIGTERM

# Readiness of `run`: GET /healthz on BILLING_METRICS_PORT (200 when the broker and
# the database are reachable). Without a metrics port there is nothing to ask, so it
# reports healthy; `relay` overrides this in compose.yaml to ask its own /healthz.
# urlopen raises on any 4xx/5xx or refused connection, which exits 1 (unhealthy).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; p = os.environ.get('BILLING_METRICS_PORT'); sys.exit(0 if not p else (0 if urllib.request.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=3).status == 200 else 1))"]

ENTRYPOINT ["billing-worker"]
CMD ["run"]
