# syntax=docker/dockerfile:1
# The reno image: the `reno` binary, the shipped event-type registry and the built browser device
# page, on a small Debian runtime as a non-root user. The Nomad jobs in deploy/nomad run every reno
# process from it (`command = "reno"`, the subcommand in `args`). Build from the repository root:
#
#   docker build -t reno:0.1.0 .
#
# Paths in the image: /app is the working directory, so reno's relative defaults hold
# (registry.path = registry/events.toml, gateway.web_dir = web/device/dist).

# The browser device page (web/device/dist), bundled with the locked npm packages.
FROM node:20-bookworm-slim AS web
WORKDIR /web
COPY web/device/package.json web/device/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY web/device/ ./
RUN npm run build

# The binary, built with the locked dependencies. The cache mounts keep the registry and target
# between builds; the binary is copied out of the cached target.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY crates/ crates/
# The reno crate declares the e2e test target there; cargo reads the manifest's targets.
COPY tests/ tests/
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin reno \
    && install -m 0755 target/release/reno /usr/local/bin/reno

# The runtime: glibc and CA certificates (TLS to the hub or a JWKS fetched by operators), nothing
# else. reno needs no shell; one is kept for `nomad alloc exec` during operations.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 reno \
    && useradd --system --uid 10001 --gid reno --home-dir /app --shell /usr/sbin/nologin reno
WORKDIR /app
COPY --from=build /usr/local/bin/reno /usr/local/bin/reno
COPY registry/events.toml registry/events.toml
COPY --from=web /web/dist web/device/dist
USER 10001:10001
# Worker, pull service, auth service and gateway admin listeners; the gateway's HTTP port.
EXPOSE 9464 9465 9466 9467 8080
CMD ["reno", "--help"]
