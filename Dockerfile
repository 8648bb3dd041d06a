# trackpoint container image: a builder stage installs trackpoint and its dependencies into a virtualenv, the
# runtime stage copies only that virtualenv onto the same slim Python base and runs it as an unprivileged user.
#
#   docker build -t trackpoint .                              (add --build-arg EXTRAS=s3 for log shipping to S3)
#   docker run -e TRACKPOINT_ADMIN_TOKEN="$(openssl rand -hex 32)" -p 8080:8080 -p 127.0.0.1:8081:8081 \
#     -v tp-data:/var/lib/trackpoint --stop-timeout 30 trackpoint --workers 2
#
# --stop-timeout: docker stop's default 10 s would SIGKILL a drain (server.drain_timeout_s, 10 s, plus the
# supervisor's 10 s of margins); the named volume keeps logs, spool and keys for the next container.
#
# Configuration: /etc/trackpoint/trackpoint.yaml (mount a file over it), or any path named by TRACKPOINT_CONFIG.
# Arguments after the image name go to `trackpoint run` (--workers, --port, --admin-port, --host).

FROM python:3.11.11-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

FROM base AS builder
# Optional object store for log shipping: s3, gcs or azure. Its lock, requirements/run-<store>.txt, pins the
# runtime and that store's client; without one, requirements/run.txt.
ARG EXTRAS=""
WORKDIR /build
COPY requirements ./requirements
# Dependencies first, from the lock (exact versions, hash-checked), in a layer of their own that source changes
# keep cached. Every dependency ships manylinux wheels.
RUN python -m venv /opt/trackpoint \
    && /opt/trackpoint/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
        -r "requirements/run${EXTRAS:+-$EXTRAS}.txt"
# A C compiler for the request path's modules, which the install compiles with mypyc (setup.py); only in this
# stage: the runtime image gets the built extensions. Debian's current gcc, whatever its patch release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY src ./src
# trackpoint itself; --no-deps: its dependencies are the lock's, never resolved afresh.
RUN /opt/trackpoint/bin/pip install --no-cache-dir --no-deps . \
    && /opt/trackpoint/bin/python -m compileall -q /opt/trackpoint/lib

FROM base AS runtime
# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 trackpoint \
    && useradd --system --no-log-init --uid 10001 --gid trackpoint --no-create-home --shell /usr/sbin/nologin trackpoint \
    && install -d -o trackpoint -g trackpoint -m 0750 /var/lib/trackpoint
COPY --from=builder /opt/trackpoint /opt/trackpoint
COPY deploy/docker/trackpoint.yaml /etc/trackpoint/trackpoint.yaml
ENV PATH=/opt/trackpoint/bin:$PATH \
    TRACKPOINT_CONFIG=/etc/trackpoint/trackpoint.yaml
WORKDIR /var/lib/trackpoint
VOLUME ["/var/lib/trackpoint"]
EXPOSE 8080 8081
USER 10001:10001
# slim has no curl: the interpreter the image already carries asks the admin port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=2)"]
# SIGTERM drains: accepting stops, in-flight requests finish, collectors flush (server.drain_timeout_s).
STOPSIGNAL SIGTERM
# Exec form: trackpoint is PID 1 and receives SIGTERM and SIGHUP itself; `--config` defaults to $TRACKPOINT_CONFIG.
ENTRYPOINT ["trackpoint", "run"]
CMD []
