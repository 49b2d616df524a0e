# syntax=docker/dockerfile:1
# Build: docker build -t emp-sidecar .
# The runtime image holds the binary and CA certificates only, runs as a
# non-root user, and needs no writable filesystem.

FROM rust:1.95-bookworm AS build
# The binary is built profile-guided (scripts/build-pgo: an instrumented
# build, a training run on loopback, the optimised build; about 10% less
# CPU a request, benches/README.md). The training run needs nginx, wrk
# and h2load, and llvm-profdata of rustc's LLVM (rustup's llvm-tools).
# This stage is thrown away: Debian's current versions are fine here.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx wrk nghttp2-client python3 \
    && rm -rf /var/lib/apt/lists/* \
    && rustup component add llvm-tools-preview
WORKDIR /src
# No debug info in the image (the release profile keeps line tables for profiling).
ENV CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY scripts ./scripts
# Crates and build directories cached between builds; the binary is copied
# out of the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    ./scripts/build-pgo && cp target/pgo/release/emp-sidecar /emp-sidecar

# distroless/cc: glibc, libgcc and CA certificates, no shell, user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /emp-sidecar /usr/local/bin/emp-sidecar
USER 65532:65532
EXPOSE 4180 9090
ENTRYPOINT ["/usr/local/bin/emp-sidecar"]
CMD ["--config", "/etc/emp-sidecar/config.toml"]
