# One image for every Postroom process; the command picks it (`python -m <process>`, as in
# compose), and `postroom migrate` applies the migrations.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    APP_ENV=production \
    API_HOST=0.0.0.0 \
    NOTIFIER_HOST=0.0.0.0 \
    RELAY_METRICS_HOST=0.0.0.0 \
    SANDBOX_HOST=0.0.0.0

RUN groupadd --system --gid 10001 postroom \
    && useradd --system --uid 10001 --gid postroom --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin postroom

WORKDIR /app

# Dependencies first, against stub packages, so a code change does not re-download them.
COPY pyproject.toml constraints.txt README.md ./
RUN mkdir postroom api outbox_relay notifier sandbox postroom_cli \
    && touch postroom/__init__.py api/__init__.py outbox_relay/__init__.py \
       notifier/__init__.py sandbox/__init__.py postroom_cli/__init__.py \
    && pip install -c constraints.txt -e .

# Editable on purpose: `postroom migrate` finds alembic.ini and migrations/ next to the package.
COPY alembic.ini ./
COPY migrations/ migrations/
COPY postroom/ postroom/
COPY api/ api/
COPY outbox_relay/ outbox_relay/
COPY notifier/ notifier/
COPY sandbox/ sandbox/
COPY postroom_cli/ postroom_cli/

USER postroom

EXPOSE 8000 8001 8002 8025

# Every process listens on all interfaces in the image (ENV above). The health check finds
# whichever process this container runs by its port setting (postroom/healthcheck.py).
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-m", "postroom.healthcheck"]

CMD ["python", "-m", "api"]
