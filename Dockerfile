# One image for every MedHeaven role: hospital worker, aggregator worker, Flower, coordinator and the
# `medheaven` tools (the key ceremony included). The role is the command (see docker-compose.yml and
# docs/deployment.md). The image holds code only: no key, no password, no data; those are mounted at run time
# (Docker secrets, env files, volumes).
#
#   docker build -t medheaven:0.1.0 .
#
# Build arguments (docs/deployment.md, "Building the image offline or behind a proxy"):
#   BASE_IMAGE      any Debian-like image with Python 3.11, venv and pip (default: the official slim image);
#                   both stages use it, so the virtualenv's interpreter path exists in the final image
#   EXTRA_CA_CERTS  PEM text of CA certificates the *build* must trust (an intercepting proxy's CA)
#   PIP_CONFIG      the text of a pip.conf for the build (index-url, cert, trusted-host, ...)
# EXTRA_CA_CERTS and PIP_CONFIG are declared in the build stage only: they reach neither the final image's
# layers nor its history. They are for test and CI images; a production build should get its packages without
# an intercepting proxy (build arguments stay in the local build cache of the machine that built it).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG EXTRA_CA_CERTS=""
ARG PIP_CONFIG=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# update-ca-certificates adds the extra CAs to /etc/ssl/certs/ca-certificates.crt; pip trusts that bundle only
# when told to (its own certifi bundle otherwise), which is what PIP_CONFIG's `cert = ...` is for
RUN set -eu; \
    if [ -n "${EXTRA_CA_CERTS}" ]; then \
      printf '%s\n' "${EXTRA_CA_CERTS}" > /usr/local/share/ca-certificates/medheaven-build-extra.crt; \
      update-ca-certificates; \
    fi; \
    if [ -n "${PIP_CONFIG}" ]; then printf '%s\n' "${PIP_CONFIG}" > /etc/pip.conf; fi
WORKDIR /src
# the dependencies first, from pyproject.toml alone: this 2 GB layer is rebuilt only when the dependency list
# changes, not on every code or README change (the package itself is installed below, without dependencies)
COPY pyproject.toml ./
RUN python -m venv /opt/medheaven \
    && /opt/medheaven/bin/pip install --upgrade pip \
    && /opt/medheaven/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && /opt/medheaven/bin/pip install -r /tmp/requirements.txt
# only what the package needs: .dockerignore keeps keys, env files, data and stores out of the build context
COPY README.md ./
COPY medheaven ./medheaven
COPY workers ./workers
COPY coordinator ./coordinator
RUN /opt/medheaven/bin/pip install --no-deps . && /opt/medheaven/bin/pip check

FROM ${BASE_IMAGE}
# scripts/compose_smoke.sh prunes dangling images by this label only
LABEL org.opencontainers.image.title=medheaven
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
