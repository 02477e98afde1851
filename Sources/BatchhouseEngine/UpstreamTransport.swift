import BatchhouseCore
import BatchhouseUpstream

/// Sends one complete request upstream and returns the complete response. `CurlClient` is the real one;
/// engine tests use a scripted fake (docs/architecture.md, "Upstream").
package protocol UpstreamTransport: Sendable {
    func execute(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse
}

extension CurlClient: UpstreamTransport {}

extension UpstreamError.Kind {
    /// As the delivery policy sees it.
    package var transportFailure: TransportFailure {
        switch self {
        case .connect: .connect
        case .timeout: .timeout
        case .transport: .transport
        case .cancelled: .cancelled
        }
    }
}

extension Result where Success == UpstreamResponse, Failure == UpstreamError {
    /// The answer as the delivery policy sees it.
    package var answer: UpstreamAnswer {
        switch self {
        case .success(let response):
            .response(
                status: response.status,
                exceptionCode: (200..<300).contains(response.status) ? nil : response.exceptionCode)
        case .failure(let error):
            .failure(error.kind.transportFailure)
        }
    }
}

extension UpstreamResponse {
    /// ClickHouse's exception code: the `X-ClickHouse-Exception-Code` header of modern servers, else the `Code: N`
    /// of the body (18.16 sends no header).
    package var exceptionCode: Int? {
        for (name, value) in headers where name.lowercased() == "x-clickhouse-exception-code" {
            if let code = Int(value.filter { !$0.isWhitespace }) { return code }
        }
        return clickHouseErrorCode(in: body)
    }
}
