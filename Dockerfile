# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run in a slim Debian image
# as an unprivileged user. One binary serves every Procfile role (release,
# web, worker, scheduler); the benchmark binary is not part of the image.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config \
    && rm -rf /var/lib/apt/lists/*
# Dependencies first, so source edits do not rebuild them: every member's
# manifest with an empty crate, then the real sources.
COPY Cargo.toml Cargo.lock ./
COPY core/Cargo.toml core/Cargo.toml
COPY workers/Cargo.toml workers/Cargo.toml
COPY bench/Cargo.toml bench/Cargo.toml
RUN mkdir -p src core/src workers/src bench/src tests/api \
    && echo 'fn main() {}' > src/main.rs && echo 'fn main() {}' > bench/src/main.rs \
    && touch src/lib.rs core/src/lib.rs workers/src/lib.rs bench/src/lib.rs tests/api/main.rs \
    && cargo build --release --locked --bin questboard || true
COPY . .
RUN touch src/main.rs src/lib.rs core/src/lib.rs workers/src/lib.rs \
    && cargo build --release --locked --bin questboard \
    && strip target/release/questboard

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/questboard --create-home questboard
COPY --from=build /src/target/release/questboard /usr/local/bin/questboard
USER questboard
WORKDIR /var/lib/questboard
ENV QB_HTTP_ADDR=0.0.0.0:8080 \
    QB_METRICS_ADDR=0.0.0.0:9464 \
    QB_STORAGE_URL=file:///var/lib/questboard/storage \
    QB_LOG_FORMAT=json
EXPOSE 8080 9464
ENTRYPOINT ["questboard"]
CMD ["serve"]
