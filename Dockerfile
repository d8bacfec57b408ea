FROM rust:1-bookworm AS build
# cmake builds the librdkafka bundled in the rdkafka crate (the Kafka source).
RUN apt-get update && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY bench bench
RUN cargo build --release --locked --bin cachewarden

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/cachewarden /usr/local/bin/cachewarden
USER nobody
EXPOSE 9187
ENTRYPOINT ["cachewarden"]
CMD ["--config", "/etc/cachewarden/cachewarden.toml", "run"]
