"""A fault-injecting, HTTP-aware TCP proxy, put between Batchhouse's `upstream.servers` and ClickHouse.

It reads each HTTP/1.1 request (head, then a Content-Length or chunked body), so it can act per request:

- `pass`: forward the request and relay the answer (keep-alive on both sides);
- `slow`: as pass, sleeping `delay_per_kb` seconds for each KiB of request body sent upstream;
- `error503`: read the whole request, answer `503` with `X-ClickHouse-Exception-Code` (202, too many
  simultaneous queries: an overload that is retried) and a ClickHouse-shaped body, and close; nothing reaches
  ClickHouse;
- `drop`: forward the head and half of the body, then close both connections (ClickHouse gets a torn request);
- `refuse`: close every connection as soon as it is accepted (ClickHouse unreachable).

The mode can be changed at any time (`set_mode`) or follow a schedule of (seconds from start, mode) steps. A
request is handled by the mode current when its head arrived. Counts per mode are kept in `stats`
(`drop_mid_body`: the dropped requests that had a body, cut after half of it).

Run alone: python3 faultproxy.py --listen 18123 --upstream 127.0.0.1:8123 --schedule 0=pass,3=error503,5=pass
"""

import argparse
import socket
import threading
import time

MODES = ("pass", "slow", "error503", "drop", "refuse")


class _Reader:
    """Buffered reads from a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buffer += data

    def until(self, marker, limit=1 << 20):
        while marker not in self.buffer:
            if len(self.buffer) > limit:
                raise ValueError("head too large")
            self._fill()
        index = self.buffer.index(marker) + len(marker)
        head, self.buffer = self.buffer[:index], self.buffer[index:]
        return head

    def exactly(self, count):
        while len(self.buffer) < count:
            self._fill()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def some(self, most):
        if not self.buffer:
            self._fill()
        data, self.buffer = self.buffer[:most], self.buffer[most:]
        return data


def _parse_head(head):
    lines = head.decode("latin-1").split("\r\n")
    start = lines[0]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return start, headers


def _body_pieces(reader, headers, piece=1024):
    """Yields the raw bytes of a message body as they are on the wire (chunk framing included)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = reader.until(b"\r\n")
            yield size_line
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                # Trailers, then an empty line.
                while True:
                    line = reader.until(b"\r\n")
                    yield line
                    if line == b"\r\n":
                        return
            remaining = size + 2
            while remaining > 0:
                data = reader.some(min(piece, remaining))
                remaining -= len(data)
                yield data
    else:
        remaining = int(headers.get("content-length", "0") or 0)
        while remaining > 0:
            data = reader.some(min(piece, remaining))
            remaining -= len(data)
            yield data


class FaultProxy:
    def __init__(self, upstream_host, upstream_port, listen_port=0):
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", listen_port))
        self.listener.listen(256)
        self.port = self.listener.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.mode = "pass"
        self.delay_per_kb = 0.002
        self.stats = {mode: 0 for mode in MODES}
        self.stats["drop_mid_body"] = 0  # requests with a body cut after half of it
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._schedule_thread = None
        self._sockets = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def set_mode(self, mode, delay_per_kb=None):
        assert mode in MODES, mode
        with self._lock:
            self.mode = mode
            if delay_per_kb is not None:
                self.delay_per_kb = delay_per_kb

    def run_schedule(self, steps):
        """`steps`: [(seconds from now, mode[, delay_per_kb])...], applied in a thread of their own."""

        def run():
            started = time.monotonic()
            for step in steps:
                at, mode = step[0], step[1]
                delay = step[2] if len(step) > 2 else None
                wait = started + at - time.monotonic()
                if wait > 0 and self._closed.wait(wait):
                    return
                self.set_mode(mode, delay)

        self._schedule_thread = threading.Thread(target=run, daemon=True)
        self._schedule_thread.start()
        return self._schedule_thread

    def close(self):
        self._closed.set()
        try:
            self.listener.close()
        except OSError:
            pass
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.close()
            except OSError:
                pass

    def _track(self, sock, add=True):
        with self._lock:
            if add:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)

    def _accept(self):
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                mode = self.mode
            if mode == "refuse":
                with self._lock:
                    self.stats["refuse"] += 1
                client.close()
                continue
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        upstream = None
        upstream_reader = None
        reader = _Reader(client)
        try:
            while not self._closed.is_set():
                try:
                    head = reader.until(b"\r\n\r\n")
                except EOFError:
                    return
                start, headers = _parse_head(head)
                with self._lock:
                    mode = self.mode
                    delay = self.delay_per_kb
                    self.stats[mode] += 1
                if mode == "refuse":
                    return
                if mode == "error503":
                    for _ in _body_pieces(reader, headers, 65536):
                        pass
                    body = (
                        b"Code: 202, e.displayText() = DB::Exception: Too many simultaneous queries "
                        b"(injected by the fault suite), e.what() = DB::Exception\n"
                    )
                    client.sendall(
                        b"HTTP/1.1 503 Service Unavailable\r\nX-ClickHouse-Exception-Code: 202\r\n"
                        b"Content-Type: text/plain; charset=UTF-8\r\nConnection: close\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(body) + body
                    )
                    return
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=120)
                    self._track(upstream)
                    upstream_reader = _Reader(upstream)
                upstream.sendall(head)
                if headers.get("expect", "").lower() == "100-continue":
                    interim = upstream_reader.until(b"\r\n\r\n")
                    client.sendall(interim)
                    if not interim.startswith(b"HTTP/1.1 100"):
                        # A final answer instead of 100 Continue: the client sends no body.
                        self._relay_body(upstream_reader, client, _parse_head(interim)[1], start)
                        continue
                if mode == "drop":
                    length = int(headers.get("content-length", "0") or 0)
                    half = max(1, length // 2) if length else 64
                    if length or "chunked" in headers.get("transfer-encoding", "").lower():
                        with self._lock:
                            self.stats["drop_mid_body"] += 1
                    sent = 0
                    for piece in _body_pieces(reader, headers):
                        piece = piece[: half - sent]
                        upstream.sendall(piece)
                        sent += len(piece)
                        if sent >= half:
                            break
                    time.sleep(0.05)
                    return  # closes both sides mid-request
                for piece in _body_pieces(reader, headers):
                    upstream.sendall(piece)
                    if mode == "slow" and delay:
                        time.sleep(delay * len(piece) / 1024.0)
                response_head = upstream_reader.until(b"\r\n\r\n")
                client.sendall(response_head)
                status_line, response_headers = _parse_head(response_head)
                close = self._relay_body(upstream_reader, client, response_headers, start)
                if close or headers.get("connection", "").lower() == "close":
                    return
        except (OSError, EOFError, ValueError):
            return
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    self._track(sock, add=False)
                    try:
                        sock.close()
                    except OSError:
                        pass

    @staticmethod
    def _relay_body(upstream_reader, client, headers, request_line):
        """Relays a response body; returns True when the connection ends with it."""
        if request_line.startswith("HEAD "):
            return headers.get("connection", "").lower() == "close"
        if "chunked" in headers.get("transfer-encoding", "").lower() or "content-length" in headers:
            for piece in _body_pieces(upstream_reader, headers, 65536):
                client.sendall(piece)
            return headers.get("connection", "").lower() == "close"
        # No framing: the body runs to the end of the connection.
        try:
            while True:
                client.sendall(upstream_reader.some(65536))
        except EOFError:
            return True


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="host:port of ClickHouse's HTTP port")
    parser.add_argument("--schedule", default="0=pass", help="SECONDS=MODE[:DELAY_PER_KB],...")
    parser.add_argument("--seconds", type=float, default=3600)
    arguments = parser.parse_args()
    host, port = arguments.upstream.rsplit(":", 1)
    proxy = FaultProxy(host, int(port), arguments.listen)
    steps = []
    for item in arguments.schedule.split(","):
        at, mode = item.split("=")
        delay = None
        if ":" in mode:
            mode, delay_text = mode.split(":")
            delay = float(delay_text)
        steps.append((float(at), mode, delay))
    proxy.run_schedule(steps)
    print("listening on %s" % proxy.url, flush=True)
    time.sleep(arguments.seconds)
    proxy.close()
    print(proxy.stats)


if __name__ == "__main__":
    main()
