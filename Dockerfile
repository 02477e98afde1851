# Build with the Swift toolchain image, run on a slim Debian with only libcurl and the compression libraries.
FROM swift:6.1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcurl4-openssl-dev zlib1g-dev liblz4-dev libzstd-dev libbrotli-dev liblzma-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift ./
RUN swift package resolve
COPY Sources ./Sources
COPY Tests ./Tests
RUN swift build -c release --product batchhouse --static-swift-stdlib \
    && cp "$(swift build -c release --show-bin-path)/batchhouse" /usr/local/bin/batchhouse

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcurl4 zlib1g liblz4-1 libzstd1 libbrotli1 liblzma5 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/batchhouse --create-home batchhouse
COPY --from=build /usr/local/bin/batchhouse /usr/local/bin/batchhouse
COPY examples/batchhouse.yaml /etc/batchhouse/batchhouse.yaml
USER batchhouse
WORKDIR /var/lib/batchhouse
EXPOSE 8123
ENTRYPOINT ["/usr/local/bin/batchhouse"]
CMD ["--config", "/etc/batchhouse/batchhouse.yaml"]
