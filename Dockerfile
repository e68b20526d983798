# One image for every MedHeaven role: hospital worker, aggregator worker, Flower, coordinator and the
# `medheaven` tools. The role is the command (see docker-compose.yml and docs/deployment.md). The image holds
# code only: no key, no password, no data; those are mounted at run time (Docker secrets, env files, volumes).
#
#   docker build -t medheaven:0.1.0 .

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# only what the package needs: .dockerignore keeps keys, env files, data and stores out of the build context
COPY pyproject.toml README.md ./
COPY medheaven ./medheaven
COPY workers ./workers
COPY coordinator ./coordinator
RUN python -m venv /opt/medheaven \
    && /opt/medheaven/bin/pip install --upgrade pip \
    && /opt/medheaven/bin/pip install .

FROM python:3.11-slim
# a fixed uid/gid so that operators can chown mounted key files to it (key files must be mode 600)
ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" medheaven \
    && useradd --system --uid "${APP_UID}" --gid medheaven --create-home --home-dir /home/medheaven medheaven \
    && mkdir -p /srv/medheaven-store /srv/medheaven-public \
    && chown medheaven:medheaven /srv/medheaven-store
COPY --from=build /opt/medheaven /opt/medheaven
ENV PATH=/opt/medheaven/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2
USER medheaven
WORKDIR /home/medheaven
# a worker is healthy when it answers a Celery ping addressed to this container (node names end in @%h, and %h is
# the container's hostname); docker-compose.yml refines this per service and disables it for one-shot commands
HEALTHCHECK --interval=60s --timeout=30s --start-period=2m --retries=3 \
    CMD celery -A workers inspect ping --timeout 10 --json | grep -q "@${HOSTNAME}\"" || exit 1
CMD ["medheaven", "--help"]
