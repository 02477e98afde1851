#!/usr/bin/env python3
"""Adversarial clients against a Batchhouse binary: does every client-held resource have a bound?

Starts the proxy (release build by default) in front of CLICKHOUSE_URL on a free loopback port, runs the probes
named on the command line, prints one result line per probe and stops the proxy (by its PID).

    eval "$(scripts/clickhouse-start)"
    scripts/probes/client-bounds.py slowloris idle heads connections fdlimit stalled chunked bomb
    scripts/clickhouse-stop "$CLICKHOUSE_DIR"

Probes (the figures of issue 9, items 4 to 6):
  slowloris    500 connections sending a request head at 1 byte/s: when are they closed, with what?
  idle         4 idle keep-alive connections after a /ping: when are they closed?
  heads        1,000 unterminated 80 KB heads: resident memory while held and after header_timeout
  connections  5,000 connections at once: how many are kept, how many refused; a new INSERT meanwhile
  fdlimit      the proxy under `ulimit -n 1024` and 2,000 connections: a new INSERT, CPU, the log
  stalled      4 INSERTs of 200 MiB of TSV, each one byte short of its Content-Length: memory, answers
  chunked      a chunked INSERT sending one chunk a second: when is it answered?
  bomb         1 MB gzip bodies inflating to 1 GiB, in a loop, next to 1-row INSERTs: answers and latency
Options: --binary PATH (default .build/release/batchhouse), --limits 'YAML flow mapping' (e.g.
'{request_timeout: 10s}'), --idle-wait SECONDS (default 180).
"""
import argparse
import gzip
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import zlib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    def __init__(self, binary, clickhouse, limits, file_limit=None):
        self.dir = tempfile.mkdtemp(prefix="bh-probe-")
        self.port = free_port()
        config = os.path.join(self.dir, "batchhouse.yaml")
        with open(config, "w") as f:
            f.write(f"listen: 127.0.0.1:{self.port}\nupstream: {{ servers: [{clickhouse}] }}\n")
            f.write("defaults: { strategy: hybrid, max_delay: 200ms }\n")
            if limits:
                f.write(f"limits: {limits}\n")
            f.write(f"dead_letter_dir: {self.dir}/dead-letter\n")
        self.log_path = os.path.join(self.dir, "batchhouse.log")
        log = open(self.log_path, "w")
        command = [binary, "--config", config]
        if file_limit:
            command = ["/bin/sh", "-c", f'ulimit -n {file_limit} && exec "$0" "$@"'] + command
        self.process = subprocess.Popen(command, stdout=log, stderr=log)
        for _ in range(100):
            try:
                if http("GET", self.port, "/ping")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("proxy did not start:\n" + self.log())

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def rss_mib(self):
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0

    def cpu_seconds(self):
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()


def http(method, port, path, body=None, headers=None, timeout=10):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def clickhouse_sql(url, sql):
    with urllib.request.urlopen(urllib.request.Request(url + "/", data=sql.encode()), timeout=30) as response:
        return response.read().decode()


def connect(port, timeout=5):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return s


def read_until_closed(s, timeout):
    """What the peer sends until it closes (True) or `timeout` passes (False)."""
    s.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            s.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = s.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except socket.timeout:
        return data, False
    except OSError:
        return data, True
    return data, False


def read_response(s, timeout):
    """One response (head and a Content-Length body), or what came before the peer closed or `timeout` passed."""
    deadline = time.monotonic() + timeout
    data = b""
    try:
        while time.monotonic() < deadline:
            head, separator, body = data.partition(b"\r\n\r\n")
            if separator:
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if len(body) >= length:
                    return data
            s.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
    except OSError:
        pass
    return data


def status_of(data):
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def insert_once(port, table, ident):
    started = time.monotonic()
    status, _ = http("POST", port, "/", f"INSERT INTO {table} VALUES ({ident})".encode(), timeout=30)
    return status, time.monotonic() - started


# MARK: probes


def probe_slowloris(proxy, args, count=500):
    head = b"POST /?query=INSERT%20INTO%20t%20FORMAT%20TSV HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    sockets = [connect(proxy.port) for _ in range(count)]
    started = time.monotonic()
    closed_at, statuses = {}, {}
    position = 0
    while len(closed_at) < count and time.monotonic() - started < 30:
        for index, s in enumerate(sockets):
            if index in closed_at:
                continue
            try:
                s.send(head[position:position + 1])
            except OSError:
                pass
        position += 1
        time.sleep(0.5)
        for index, s in enumerate(sockets):
            if index in closed_at:
                continue
            s.setblocking(False)
            try:
                data = s.recv(65536)
                statuses[index] = status_of(data) if data else None
                data2, _ = read_until_closed(s, 0.2)
                closed_at[index] = time.monotonic() - started
            except BlockingIOError:
                pass
            except OSError:
                closed_at[index] = time.monotonic() - started
            s.setblocking(True)
        time.sleep(0.5)
    answered = sum(1 for v in statuses.values() if v == 408)
    times = sorted(closed_at.values())
    still_open = count - len(closed_at)
    span = f"{times[0]:.1f}-{times[-1]:.1f} s" if times else "-"
    print(f"slowloris: {count} connections at 1 byte/s; {answered} answered 408 and closed after {span}; "
          f"still open at 30 s: {still_open}")
    for s in sockets:
        s.close()


def probe_idle(proxy, args, count=4):
    sockets = []
    for _ in range(count):
        s = connect(proxy.port)
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(4096)
        sockets.append(s)
    started = time.monotonic()
    results = [read_until_closed(s, args.idle_wait) for s in sockets]
    elapsed = time.monotonic() - started
    closed = sum(1 for data, was_closed in results if was_closed)
    silent = sum(1 for data, was_closed in results if was_closed and not data)
    print(f"idle: {count} keep-alive connections idle after /ping; {closed} closed ({silent} silently) after "
          f"{elapsed:.1f} s; waited up to {args.idle_wait:.0f} s")
    for s in sockets:
        s.close()


def probe_heads(proxy, args, count=1000, size=80_000):
    line = b"X-Pad: " + b"a" * 90 + b"\r\n"
    head = b"POST / HTTP/1.1\r\nHost: x\r\n" + line * (size // len(line))
    before = proxy.rss_mib()
    sockets = []
    for _ in range(count):
        s = connect(proxy.port)
        s.sendall(head)
        sockets.append(s)
    time.sleep(1)
    held = proxy.rss_mib()
    started = time.monotonic()
    answers = [read_until_closed(s, 30) for s in sockets]
    elapsed = time.monotonic() - started
    time.sleep(1)
    after = proxy.rss_mib()
    closed = sum(1 for _, was_closed in answers if was_closed)
    timeouts = sum(1 for data, _ in answers if status_of(data) == 408)
    print(f"heads: {count} unterminated {size // 1000} KB heads; RSS {before:.0f} -> {held:.0f} MiB while held; "
          f"{closed} closed ({timeouts} with 408) within {elapsed + 1:.1f} s; RSS {after:.0f} MiB after")
    for s in sockets:
        s.close()


def raise_own_file_limit(target):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(target, soft), hard), hard))


def probe_connections(proxy, args, count=5000):
    raise_own_file_limit(count + 100)
    sockets = []
    for _ in range(count):
        try:
            sockets.append(connect(proxy.port, timeout=2))
        except OSError:
            break
    time.sleep(1.5)
    refused = 0
    for s in sockets:
        s.setblocking(False)
        try:
            data = s.recv(4096)
            if status_of(data) == 503:
                refused += 1
        except (BlockingIOError, OSError):
            pass
    s = connect(proxy.port)
    started = time.monotonic()
    s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 32\r\n\r\nINSERT INTO t VALUES (1)        ")
    data = read_response(s, 10)
    latency = time.monotonic() - started
    print(f"connections: {len(sockets)} opened; {len(sockets) - refused} kept, {refused} answered 503 and closed; "
          f"a new INSERT meanwhile: {status_of(data)} after {latency * 1000:.0f} ms")
    for s in sockets:
        s.close()


def probe_fdlimit(args):
    proxy = Proxy(args.binary, args.clickhouse, args.limits, file_limit=1024)
    try:
        raise_own_file_limit(2200)
        cpu_before = proxy.cpu_seconds()
        sockets = []
        for _ in range(2000):
            try:
                sockets.append(connect(proxy.port, timeout=2))
            except OSError:
                break
        s = connect(proxy.port)
        started = time.monotonic()
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 32\r\n\r\nINSERT INTO t VALUES (1)        ")
        data = read_response(s, 10)
        latency = time.monotonic() - started
        time.sleep(5)
        cpu = proxy.cpu_seconds() - cpu_before
        log = proxy.log()
        capped = [line for line in log.splitlines() if "capped" in line]
        accept_lines = sum(1 for line in log.splitlines() if "cannot accept" in line)
        print(f"fdlimit: ulimit -n 1024, {len(sockets)} connections; a new INSERT: {status_of(data)} after "
              f"{latency * 1000:.0f} ms; proxy CPU {cpu:.2f} s over ~{time.monotonic() - started:.0f} s; "
              f"accept-error log lines: {accept_lines}; {capped[0].split('batchhouse: ', 1)[-1] if capped else 'not capped'}")
        for s in sockets:
            s.close()
    finally:
        proxy.stop()


def probe_stalled(proxy, args, count=4, size=200 << 20):
    row = b"1\t" + b"x" * 61 + b"\n"
    before = proxy.rss_mib()
    results = [None] * count
    peak = [before]

    def client(index):
        s = connect(proxy.port, timeout=120)
        s.sendall(b"POST /?query=INSERT%20INTO%20t%20FORMAT%20TSV HTTP/1.1\r\nHost: x\r\n"
                  + f"Content-Length: {size}\r\n\r\n".encode())
        block = row * (1 << 20 // len(row) + 1)
        sent = 0
        try:
            while sent < size - 1:
                piece = block[: min(len(block), size - 1 - sent)]
                s.sendall(piece)
                sent += len(piece)
        except OSError:
            pass
        data, closed = read_until_closed(s, 60)
        results[index] = (status_of(data), closed, sent)
        s.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    started = time.monotonic()
    while any(t.is_alive() for t in threads):
        peak[0] = max(peak[0], proxy.rss_mib())
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    after = proxy.rss_mib()
    summary = ", ".join(f"{status} after {sent >> 20} MiB sent" for status, _, sent in results)
    print(f"stalled: {count} INSERTs of {size >> 20} MiB one byte short; RSS {before:.0f} -> peak {peak[0]:.0f} MiB, "
          f"{after:.0f} MiB when all were answered ({elapsed:.0f} s); answers: {summary}")


def probe_chunked(proxy, args):
    s = connect(proxy.port, timeout=600)
    s.sendall(b"POST /?query=INSERT%20INTO%20t%20FORMAT%20TSV HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    started = time.monotonic()
    s.setblocking(False)
    data = b""
    chunks = 0
    while time.monotonic() - started < 400:
        try:
            data = s.recv(65536)
            break
        except BlockingIOError:
            pass
        try:
            s.send(b"2\r\n1\n\r\n")
            chunks += 1
        except OSError:
            break
        time.sleep(1)
    print(f"chunked: one chunk a second; answered {status_of(data)} after {time.monotonic() - started:.1f} s "
          f"({chunks} chunks sent)")
    s.close()


def make_bomb(decoded=1 << 30):
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + 15)
    zeros = bytes(1 << 20)
    out = [compressor.compress(zeros) for _ in range(decoded >> 20)]
    out.append(compressor.flush())
    return b"".join(out)


def probe_bomb(proxy, args, seconds=10):
    bomb = make_bomb()
    table = "bh_probe_bomb"
    clickhouse_sql(args.clickhouse, f"CREATE TABLE IF NOT EXISTS default.{table} (id UInt64) ENGINE = MergeTree ORDER BY id")
    clickhouse_sql(args.clickhouse, f"TRUNCATE TABLE default.{table}")
    before = proxy.rss_mib()
    started = time.monotonic()
    status, body = http("POST", proxy.port, "/?query=INSERT%20INTO%20t%20FORMAT%20TSV", bomb,
                        {"Content-Encoding": "gzip"}, timeout=60)
    one = time.monotonic() - started
    peak = [proxy.rss_mib()]
    stop = time.monotonic() + seconds
    answers = []

    def bomber():
        while time.monotonic() < stop:
            t0 = time.monotonic()
            code, _ = http("POST", proxy.port, "/?query=INSERT%20INTO%20t%20FORMAT%20TSV", bomb,
                           {"Content-Encoding": "gzip"}, timeout=60)
            answers.append((code, time.monotonic() - t0))

    def watcher():
        while time.monotonic() < stop:
            peak[0] = max(peak[0], proxy.rss_mib())
            time.sleep(0.05)

    threads = [threading.Thread(target=bomber), threading.Thread(target=watcher)]
    for t in threads:
        t.start()
    latencies, ok, ident = [], 0, 0
    while time.monotonic() < stop:
        ident += 1
        code, latency = insert_once(proxy.port, f"default.{table}", ident)
        latencies.append(latency)
        ok += code == 200
        time.sleep(0.01)
    for t in threads:
        t.join()
    time.sleep(1)
    landed = int(clickhouse_sql(args.clickhouse, f"SELECT uniqExact(id) FROM default.{table}").strip())
    clickhouse_sql(args.clickhouse, f"DROP TABLE default.{table}")
    codes = sorted({code for code, _ in answers} | {status})
    slowest = max([one] + [t for _, t in answers])
    latencies.sort()
    print(f"bomb: {len(bomb) / 1e6:.2f} MB gzip of 1 GiB zeros; first answered {status} "
          f"({body[:60]!r}) after {one:.2f} s; RSS {before:.0f} -> peak {peak[0]:.0f} MiB; "
          f"{len(answers)} more bombs in {seconds} s (codes {codes}, slowest {slowest:.2f} s); "
          f"{len(latencies)} 1-row INSERTs meanwhile: {ok} answered 200, mean "
          f"{sum(latencies) / len(latencies) * 1000:.1f} ms, p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"max {latencies[-1] * 1000:.0f} ms, {landed} landed")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probes", nargs="+")
    parser.add_argument("--binary", default=os.path.join(REPO, ".build/release/batchhouse"))
    parser.add_argument("--clickhouse", default=os.environ.get("CLICKHOUSE_URL"))
    parser.add_argument("--limits", default=None)
    parser.add_argument("--idle-wait", type=float, default=180)
    args = parser.parse_args()
    if not args.clickhouse:
        raise SystemExit("set CLICKHOUSE_URL or --clickhouse")
    for name in args.probes:
        if name == "fdlimit":
            probe_fdlimit(args)
            continue
        probe = globals().get("probe_" + name)
        if probe is None:
            raise SystemExit(f"unknown probe {name}")
        proxy = Proxy(args.binary, args.clickhouse, args.limits)
        try:
            probe(proxy, args)
        finally:
            proxy.stop()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
