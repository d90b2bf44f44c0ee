# syntax=docker/dockerfile:1
#
# The image the Helm chart runs: `signing-key-operator run` (the operator, the default command)
# and `signing-key-operator serve` (the JWKS server). Build it from the repository root:
#
#     docker build -t signing-key-operator:0.1.0 .
#
# BASE_IMAGE is any Debian bookworm image with Python >= 3.11, `python -m venv` and
# groupadd/useradd; the default is the one users pull. `signing-key-operator dev-cluster image`,
# which reaches no container registry, passes a base it made from Debian's packages instead.
#
# It runs as an unprivileged user (UID/GID 65532, matching the chart's securityContext) and
# writes nothing at run time: no bytecode caches (compiled at build time,
# PYTHONDONTWRITEBYTECODE), no home directory, logs on stdout. So it works with
# readOnlyRootFilesystem: true; the chart still mounts an emptyDir at /tmp for any library that
# wants a temporary file. Only what the package needs is copied: tests, charts and the dev
# cluster's caches stay out of the image.

ARG BASE_IMAGE=python:3.12-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN /opt/venv/bin/pip install . \
 && /opt/venv/bin/python -m compileall -q /opt/venv

FROM ${BASE_IMAGE}
RUN groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin nonroot
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
# 8080: /metrics of the operator, or the JWKS server; 8081: the operator's /healthz.
EXPOSE 8080 8081
ENTRYPOINT ["signing-key-operator"]
CMD ["run"]
