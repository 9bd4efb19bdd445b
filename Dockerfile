# confab: multi-stage release image. No Docker engine runs on the dev machines, so this file is
# checked by reading, not by CI; build it with
#   docker build -t confab:0.1.0 .
# Runtime: debian slim (glibc + libstdc++ for ONNX Runtime), non-root uid 65532, the
# embedding model and ONNX Runtime baked in under /opt/confab/assets.

FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# rust-toolchain.toml (copied with the sources) selects the toolchain: qdrant-edge needs
# Rust >= 1.96.
COPY . .
RUN cargo build --release --locked --bin confab
ENV CONFAB_ASSETS=/opt/confab/assets
RUN bash scripts/fetch-models.sh && rm -rf /opt/confab/assets/wheels

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/confab /etc/confab \
    && chown 65532:65532 /var/lib/confab
COPY --from=build /src/target/release/confab /usr/local/bin/confab
COPY --from=build /opt/confab/assets /opt/confab/assets
ENV CONFAB_ASSETS=/opt/confab/assets \
    CONFAB__SERVER__BIND=0.0.0.0:8787 \
    CONFAB__VECTOR__DATA_DIR=/var/lib/confab
USER 65532:65532
WORKDIR /var/lib/confab
EXPOSE 8787
ENTRYPOINT ["/usr/local/bin/confab"]
CMD ["serve"]
