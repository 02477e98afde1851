// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "Batchhouse",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "batchhouse", targets: ["batchhouse"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        // Already in the graph through swift-nio: atomics at a pointer, for the per-thread request counters.
        .package(url: "https://github.com/apple/swift-atomics.git", from: "1.3.0"),
        // Tests only: property-based checks with seeds and shrinking (Tests/BatchhouseSpoolTests/SpoolModelTests.swift).
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.1"),
    ],
    targets: [
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CBrotli", pkgConfig: "libbrotlidec", providers: [.apt(["libbrotli-dev"])]),
        .systemLibrary(name: "CLzma", pkgConfig: "liblzma", providers: [.apt(["liblzma-dev"])]),
        .target(name: "BatchhouseCore"),
        .target(
            name: "BatchhouseConfig",
            dependencies: ["BatchhouseCore", .product(name: "Yams", package: "Yams")]
        ),
        .target(
            name: "BatchhouseUpstream",
            dependencies: [
                "CCurl", "CZlib", "CLZ4", "CZstd", "CBrotli", "CLzma", "BatchhouseCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(name: "BatchhouseSpool", dependencies: ["BatchhouseCore", "CZlib"]),
        // An INSERT's life from intake to settlement; NIOCore only for ByteBuffer.
        .target(
            name: "BatchhouseEngine",
            dependencies: [
                "BatchhouseCore", "BatchhouseConfig", "BatchhouseUpstream", "BatchhouseSpool",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                // HMAC-SHA256 for identity tags and the credential cache (docs/credentials.md).
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Atomics", package: "swift-atomics"),
            ]
        ),
        .target(
            name: "BatchhouseServer",
            dependencies: [
                "BatchhouseEngine", "BatchhouseCore", "BatchhouseConfig", "BatchhouseUpstream", "BatchhouseSpool",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "batchhouse",
            dependencies: [
                "BatchhouseServer", "BatchhouseEngine", "BatchhouseConfig", "BatchhouseCore", "BatchhouseSpool",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(name: "batchhouse-microbench", dependencies: ["BatchhouseCore"], path: "Benchmarks/Microbench"),
        // Fixtures/Binary: captures from the test servers, read by path (BinaryFixtures.swift).
        .testTarget(name: "BatchhouseCoreTests", dependencies: ["BatchhouseCore"], exclude: ["Fixtures"]),
        .testTarget(name: "BatchhouseConfigTests", dependencies: ["BatchhouseConfig", "BatchhouseCore"]),
        .testTarget(
            name: "BatchhouseSpoolTests",
            dependencies: [
                "BatchhouseSpool", "BatchhouseCore",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
        .testTarget(
            name: "BatchhouseUpstreamTests",
            dependencies: [
                "BatchhouseUpstream", "BatchhouseCore", .product(name: "NIOCore", package: "swift-nio"),
                // A loopback HTTP server for the easy-handle reuse tests (RecordingHTTPServer.swift).
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "BatchhouseEngineTests",
            dependencies: [
                "BatchhouseEngine", "BatchhouseConfig", "BatchhouseCore", "BatchhouseSpool", "BatchhouseUpstream",
                .product(name: "NIOCore", package: "swift-nio"),
                // An event loop whose turns the tests run (the spool's one write per turn).
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                // Checks the identity digest against swift-crypto's own HMAC.
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .testTarget(
            name: "BatchhouseServerTests",
            dependencies: [
                "BatchhouseServer", "BatchhouseEngine", "BatchhouseConfig", "BatchhouseCore", "BatchhouseUpstream",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "BatchhouseIntegrationTests",
            dependencies: [
                "BatchhouseServer", "BatchhouseEngine", "BatchhouseConfig", "BatchhouseCore", "BatchhouseUpstream",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
