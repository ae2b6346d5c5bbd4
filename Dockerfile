# personyze-sync in a container: the daemon (`run`) by default, or any other command.
#
# Build:  docker build -t personyze-sync .
# Run:    docker run -d --name personyze-sync -p 9108:9108 \
#           -v "$PWD/config:/config:ro" -v personyze-sync-state:/state \
#           -e PERSONYZE_API_KEY -e PG_PASSWORD personyze-sync
# Once:   docker run --rm -v "$PWD/config:/config:ro" -v personyze-sync-state:/state \
#           -e PERSONYZE_API_KEY -e PG_PASSWORD personyze-sync once -c /config/personyze-sync.yaml
#
# The config file goes in /config (read-only), the state store's SQLite file in the
# /state volume: a relative SQLite path resolves against the config file's folder
# (/config), so the config must say state.url: sqlite:////state/personyze-sync.db
# (absolute, as deploy/personyze-sync.yaml does). Keep the volume: losing it makes the
# next run read everything again and re-send only what it cannot match (rows with an
# email merge; rows without one are first adopted from Personyze's users).
# Secrets come from the environment or /run/secrets, never from the image.
# README.md's Deployment section has Compose and Kubernetes examples.

# --- build: the package and its dependencies in a virtualenv ----------------------------
FROM python:3.11.13-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sync ./sync
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir '.[mysql]'

# --- runtime: the virtualenv only, run by an unprivileged user --------------------------
FROM python:3.11.13-slim-bookworm
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /state \
        --shell /usr/sbin/nologin sync \
    && mkdir -p /state /config \
    && chown 10001:10001 /state
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Paths in a config do not depend on the working directory (see state.url above).
WORKDIR /
VOLUME ["/state"]
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# /healthz, /readyz and /metrics (personyze-sync run --http-port, daemon.http_port).
EXPOSE 9108
# slim has no curl: ask with Python. It asks port 9108; if you move the port
# (--http-port, daemon.http_port), override the health check as well.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]
ENTRYPOINT ["personyze-sync"]
CMD ["run", "-c", "/config/personyze-sync.yaml"]
