# personyze-sync, first version: the one-shot commands (`once`, `backfill`) in a
# container. The daemon (`run`, health checks, metrics) comes with the daemon issue.
# Build:  docker build -t personyze-sync .
# Run:    docker run --rm -v $PWD/config:/config:ro -v sync-state:/state \
#           -e PERSONYZE_API_KEY personyze-sync once -c /config/personyze-sync.yaml

FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sync ./sync
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir '.[mysql]'

FROM python:3.11.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /state --shell /usr/sbin/nologin sync \
    && mkdir -p /state /config && chown sync /state
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
WORKDIR /state
VOLUME ["/state"]
USER sync
ENTRYPOINT ["personyze-sync"]
CMD ["once", "-c", "/config/personyze-sync.yaml"]
