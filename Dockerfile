# syntax=docker/dockerfile:1.7
#
# herald: Pusher Channels protocol v7 compatible real-time server.
#
#   docker build -t herald .
#   docker run --rm -p 6001:6001 \
#     -v "$PWD/herald.toml:/etc/herald/herald.toml:ro" \
#     herald --config /etc/herald/herald.toml
#
# Everything (WebSocket /app/{key}, HTTP API /apps/{id}/..., /up, /ready,
# /metrics) is served on port 6001. Configuration comes from the TOML file
# and/or HERALD_* environment variables (e.g. HERALD_REDIS_URL,
# HERALD_LOG_FORMAT=json, HERALD_DRAIN__WINDOW=10s).

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

############################ build stage ############################
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder

WORKDIR /src

# The whole workspace is needed (members = crates/*); .dockerignore keeps
# target/, .git/ and friends out of the context.
COPY . .

# Cache mounts keep the registry and the target dir between builds; the
# binary is copied out of the cached target dir so the next stage sees it.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p herald-server \
 && install -D -m 0755 target/release/herald /out/herald

########################### runtime stage ###########################
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates: TLS to Redis (rediss://) and HTTPS webhook endpoints.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 herald \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin herald \
 && mkdir -p /etc/herald

COPY --from=builder /out/herald /usr/local/bin/herald

# Numeric user so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001

EXPOSE 6001

# No HEALTHCHECK: the image has no HTTP client. Orchestrators should probe
# GET /up (liveness) and GET /ready (readiness, 503 while draining) on 6001.
# SIGTERM starts a graceful drain (see deploy/kubernetes/README.md).
STOPSIGNAL SIGTERM

ENTRYPOINT ["herald", "start"]
