# syntax=docker/dockerfile:1
# Build: docker build -t emp-sidecar .
# The runtime image holds the binary and CA certificates only, runs as a
# non-root user, and needs no writable filesystem.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# No debug info in the image (the release profile keeps line tables for profiling).
ENV CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && echo '' > src/lib.rs \
    && echo 'fn main() {}' > benches/session_memory.rs \
    && cargo build --release --locked \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

# distroless/cc: glibc, libgcc and CA certificates, no shell, user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/emp-sidecar /usr/local/bin/emp-sidecar
USER 65532:65532
EXPOSE 4180 9090
ENTRYPOINT ["/usr/local/bin/emp-sidecar"]
CMD ["--config", "/etc/emp-sidecar/config.toml"]
