# The web console (Vue, built by Vite), embedded in the binary by build.rs.
FROM node:20-bookworm-slim AS console
WORKDIR /console
COPY console/package.json console/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY console/ ./
RUN npx vite build

FROM rust:1-bookworm AS build
# cmake builds the librdkafka bundled in the rdkafka crate (the Kafka source).
RUN apt-get update && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src src
COPY migrations migrations
COPY bench bench
COPY --from=console /console/dist console/dist
RUN cargo build --release --locked --bin cachewarden

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/cachewarden /usr/local/bin/cachewarden
# An unprivileged user of its own; the worker needs no file it writes.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin cachewarden
USER 10001:10001
EXPOSE 9187
# Ready = streaming, Redis reachable, lag and memory within [monitor]: `cachewarden ready`
# asks the worker's own /readyz (no curl in the image).
HEALTHCHECK --interval=10s --timeout=6s --start-period=30s --retries=3 \
    CMD ["cachewarden", "--config", "/etc/cachewarden/cachewarden.toml", "ready"]
ENTRYPOINT ["cachewarden"]
CMD ["--config", "/etc/cachewarden/cachewarden.toml", "run"]
