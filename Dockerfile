# One image, three entry points: `billing-worker run` (default),
# `billing-worker relay` and `billing-worker migrate`.
#
#   docker build -t billing-worker:local --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#   docker run --rm -e BILLING_DATABASE_URL_FILE=/run/secrets/database-url ... billing-worker:local migrate
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
# Every third-party package from the lock (`make lock`), each checked against its hash:
# two builds of one commit get the same versions. No dev tools: requirements.lock has none.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
# Then the two local packages, resolving nothing (hatchling reads README.md as the readme;
# the wheel carries migrations/ inside the package as billing_worker/migrations).
COPY contracts/ contracts/
COPY pyproject.toml README.md ./
COPY billing_worker/ billing_worker/
COPY migrations/ migrations/
RUN pip install --no-cache-dir --no-deps ./contracts . \
 && billing-worker --help > /dev/null

# ---- runtime ----
FROM python:3.11.15-slim-bookworm AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
# Where the image's source lives: pass your repository's URL (no public home is fixed yet).
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="billing-worker" \
      org.opencontainers.image.description="Message-driven billing service: wallets, payments, subscriptions and invoices over RabbitMQ" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.15-slim-bookworm"

# No writes at run time (the container may run with a read-only root filesystem): no
# bytecode caches, nothing else written outside /tmp.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 billing \
 && useradd --system --uid 10001 --gid billing --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin billing

# Root-owned and read-only for the service user: the code and its migrations (inside the
# package) are not the process's to change.
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app

USER 10001:10001

# 8080: the webhook relay (`relay`); 9477: the internal metrics/readiness port
# (BILLING_METRICS_PORT), never to be published outside the host's network.
EXPOSE 8080 9477
STOPSIGNAL SIGTERM

# Readiness of `run`: GET /healthz on BILLING_METRICS_PORT (200 when the broker and
# the database are reachable). Without a metrics port there is nothing to ask, so it
# reports healthy; `relay` overrides this in compose.yaml to ask its own /healthz.
# urlopen raises on any 4xx/5xx or refused connection, which exits 1 (unhealthy).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; p = os.environ.get('BILLING_METRICS_PORT'); sys.exit(0 if not p else (0 if urllib.request.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=3).status == 200 else 1))"]

ENTRYPOINT ["billing-worker"]
CMD ["run"]
