#!/usr/bin/env python3
"""The outage probe: what a ClickHouse outage under steady load does to Batchhouse (memory, spool, refusals,
delivery afterwards). Run it through scripts/probes/outage, which builds the release binary and picks the
Python environment with matplotlib; `scripts/probes/outage --help` lists the options. See that script's header
for what is measured and the limits of the load generator.

This file has two roles:
  outage.py [options]          the probe: starts ClickHouse, the proxy and the load, stops ClickHouse, reports
  outage.py loadgen [options]  the load generator, started by the probe as a separate process (so its CPU is
                               its own and the probe's sampling does not stall it)
Python standard library only; matplotlib (from scripts/python-env) is imported for the plot alone.
"""
import argparse
import csv
import http.client
import json
import mmap
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Shared counters between the load generator and the probe: int64s in a small mmap'd file, written by the load
# generator once per loop turn, read by the probe's sampler once a second.
COUNTERS = ["sent", "acked", "status_503", "status_other", "errors", "timeouts", "skipped", "lag_us",
            "max_lag_us", "inflight", "reconnects", "done"]
C = {name: i for i, name in enumerate(COUNTERS)}
COUNTER_FORMAT = "<%dq" % len(COUNTERS)
COUNTER_BYTES = struct.calcsize(COUNTER_FORMAT)

# Per-id outcome, one byte per id, written by the load generator at its end.
UNSENT, IN_FLIGHT, ACKED, REFUSED_503, REFUSED_OTHER, NO_ANSWER = range(6)


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 32MiB)")
    factor = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30,
              "KB": 10**3, "MB": 10**6, "GB": 10**9}[m.group(2)]
    return int(m.group(1)) * factor


def size_text(n):
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def mib(n):
    return n / 1048576.0


# ---------------------------------------------------------------------------------------------------------------
# The load generator

class Conn:
    __slots__ = ("sock", "buf", "id", "sent_at", "pending", "retry_at")

    def __init__(self):
        self.sock = None
        self.buf = bytearray()
        self.id = -1
        self.sent_at = 0.0
        self.pending = None
        self.retry_at = 0.0


def loadgen(argv):
    p = argparse.ArgumentParser(prog="outage.py loadgen")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--row-bytes", type=int, required=True)
    p.add_argument("--timeout", type=float, required=True)
    p.add_argument("--counters", required=True)
    p.add_argument("--status-file", required=True)
    a = p.parse_args(argv)

    fd = os.open(a.counters, os.O_RDWR)
    shared = mmap.mmap(fd, COUNTER_BYTES)
    os.close(fd)
    stopping = False

    def on_term(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    # One row: (id,'<id>-xxxx...'), about row_bytes long for a 7-digit id; the pad starts with the id, so the
    # probe can check each row's content against its id.
    filler = b"x" * max(1, a.row_bytes - 2 * 7 - 6)
    head = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: "
    statement = ("INSERT INTO %s (id, pad) VALUES " % a.table).encode()
    suffix = b"-" + filler + b"')"

    def request(i):
        s = str(i).encode()
        body = statement + b"(" + s + b",'" + s + suffix
        return head + str(len(body)).encode() + b"\r\n\r\n" + body

    statuses = bytearray(1 << 16)
    counts = [0] * len(COUNTERS)
    by_status = {}
    first_refusal = None
    sel = selectors.DefaultSelector()
    conns = [Conn() for _ in range(a.connections)]
    idle = []
    busy = set()
    down = []
    t0 = time.monotonic()

    def connect(c, now):
        try:
            s = socket.create_connection(("127.0.0.1", a.port), timeout=1.0)
        except OSError:
            c.retry_at = now + 0.1
            down.append(c)
            return
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        c.sock = s
        c.buf = bytearray()
        sel.register(s, selectors.EVENT_READ, c)
        idle.append(c)

    def drop(c, now, outcome):
        # The connection failed or timed out: the request on it (if any) has no answer.
        if c.id >= 0:
            statuses[c.id] = outcome
            c.id = -1
        busy.discard(c)
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        c.sock = None
        c.pending = None
        counts[C["reconnects"]] += 1
        c.retry_at = now + 0.05
        down.append(c)

    def complete(c, status, body, now):
        nonlocal first_refusal
        by_status[status] = by_status.get(status, 0) + 1
        if status == 200:
            statuses[c.id] = ACKED
            counts[C["acked"]] += 1
        else:
            if status == 503:
                statuses[c.id] = REFUSED_503
                counts[C["status_503"]] += 1
            else:
                statuses[c.id] = REFUSED_OTHER
                counts[C["status_other"]] += 1
            if first_refusal is None:
                first_refusal = {"t": now - t0, "status": status, "id": c.id,
                                 "body": bytes(body[:300]).decode("utf-8", "replace").strip()}
        c.id = -1
        busy.discard(c)
        idle.append(c)

    def readable(c, now):
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            counts[C["errors"]] += 1
            drop(c, now, NO_ANSWER)
            return
        if not data:
            if c.id >= 0:
                counts[C["errors"]] += 1
            drop(c, now, NO_ANSWER)
            return
        c.buf += data
        end = c.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(c.buf[:end]).decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            counts[C["errors"]] += 1
            drop(c, now, NO_ANSWER)
            return
        length = 0
        close = chunked = False
        for line in lines[1:]:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "content-length":
                length = int(value.strip())
            elif key == "connection" and value.strip().lower() == "close":
                close = True
            elif key == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if chunked:
            # Only short error bodies come chunked, if ever: wait for the last chunk.
            last = c.buf.find(b"\r\n0\r\n\r\n", end + 2)
            if last < 0 and not c.buf[end + 4:].startswith(b"0\r\n\r\n"):
                return
            total = (last + 7) if last >= 0 else end + 9
        else:
            total = end + 4 + length
            if len(c.buf) < total:
                return
        body = c.buf[end + 4:total]
        del c.buf[:total]
        if c.id < 0:  # an answer nobody asked for
            counts[C["errors"]] += 1
            drop(c, now, NO_ANSWER)
            return
        complete(c, status, body, now)
        if close:
            drop(c, now, NO_ANSWER)

    def writable(c, now):
        try:
            n = c.sock.send(c.pending)
        except BlockingIOError:
            return
        except OSError:
            counts[C["errors"]] += 1
            drop(c, now, NO_ANSWER)
            return
        c.pending = c.pending[n:]
        if not c.pending:
            c.pending = None
            sel.modify(c.sock, selectors.EVENT_READ, c)

    def send(c, i, now):
        nonlocal statuses
        if i >= len(statuses):
            statuses.extend(bytes(len(statuses)))
        req = request(i)
        c.id = i
        c.sent_at = now
        statuses[i] = IN_FLIGHT
        busy.add(c)
        try:
            n = c.sock.send(req)
        except BlockingIOError:
            n = 0
        except OSError:
            counts[C["errors"]] += 1
            drop(c, now, NO_ANSWER)
            return
        if n < len(req):
            c.pending = memoryview(req)[n:]
            sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)

    now = time.monotonic()
    for c in conns:
        connect(c, now)
    t0 = time.monotonic()
    next_id = 0
    scheduled = 0  # send slots handed out so far (sent + skipped)
    last_sweep = t0
    stop_deadline = None
    while True:
        now = time.monotonic()
        if stopping and stop_deadline is None:
            stop_deadline = now + a.timeout
        if stop_deadline is not None and (not busy or now > stop_deadline):
            break
        if down:
            for c in [c for c in down if c.retry_at <= now]:
                down.remove(c)
                connect(c, now)
        timeout = 0.01
        if stop_deadline is None:
            due = int((now - t0) * a.rate) + 1
            while scheduled < due and idle:
                send(idle.pop(), next_id, now)
                next_id += 1
                scheduled += 1
            behind = due - scheduled
            lag_us = int(behind / a.rate * 1e6) if behind > 0 else 0
            counts[C["lag_us"]] = lag_us
            if lag_us > counts[C["max_lag_us"]]:
                counts[C["max_lag_us"]] = lag_us
            if behind > a.rate:  # more than a second behind: drop those slots rather than burst later
                counts[C["skipped"]] += behind - int(a.rate)
                scheduled = due - int(a.rate)
            if idle:
                timeout = max(0.001, scheduled / a.rate - (now - t0))
        for key, events in sel.select(timeout):
            c = key.data
            if c.sock is None:
                continue
            if events & selectors.EVENT_WRITE and c.pending is not None:
                writable(c, now)
            if c.sock is not None and events & selectors.EVENT_READ:
                readable(c, now)
        if now - last_sweep > 0.1:
            last_sweep = now
            for c in [c for c in busy if now - c.sent_at > a.timeout]:
                counts[C["timeouts"]] += 1
                drop(c, now, NO_ANSWER)
        counts[C["sent"]] = next_id
        counts[C["inflight"]] = len(busy)
        struct.pack_into(COUNTER_FORMAT, shared, 0, *counts)

    for c in list(busy):
        drop(c, time.monotonic(), NO_ANSWER)
    elapsed = time.monotonic() - t0
    with open(a.status_file, "wb") as f:
        f.write(statuses[:next_id])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(a.status_file + ".json", "w") as f:
        json.dump({"sent": next_id, "by_status": {str(k): v for k, v in sorted(by_status.items())},
                   "errors": counts[C["errors"]], "timeouts": counts[C["timeouts"]],
                   "skipped": counts[C["skipped"]], "max_lag_s": counts[C["max_lag_us"]] / 1e6,
                   "reconnects": counts[C["reconnects"]], "seconds": elapsed,
                   "cpu_s": usage.ru_utime + usage.ru_stime, "first_refusal": first_refusal}, f)
    counts[C["done"]] = 1
    struct.pack_into(COUNTER_FORMAT, shared, 0, *counts)


# ---------------------------------------------------------------------------------------------------------------
# Helpers of the probe

def log(message):
    print(f"outage: [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_call(method, port, path, body=None, timeout=2.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class ClickHouse:
    """A throwaway server from scripts/clickhouse-start; stopped and started again on the same folder and ports."""

    def __init__(self):
        self.vars = self._start([])
        self.dir = self.vars["CLICKHOUSE_DIR"]
        self.port = int(self.vars["CLICKHOUSE_URL"].rsplit(":", 1)[1])
        self.paused = False

    @property
    def pid(self):
        return int(self.vars["CLICKHOUSE_PID"])

    @staticmethod
    def _start(extra):
        out = subprocess.run([os.path.join(REPO, "scripts/clickhouse-start")] + extra, stdout=subprocess.PIPE,
                             text=True, check=True).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def sql(self, statement, timeout=30.0):
        status, body = http_call("POST", self.port, "/", statement.encode(), timeout=timeout)
        if status != 200:
            raise RuntimeError(f"ClickHouse {status}: {body[:300]!r} for {statement[:100]}")
        return body.decode()

    def alive(self):
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def stop(self, mode, grace):
        """mode stop: SIGTERM, SIGKILL if it still runs `grace` seconds later; kill: SIGKILL at once; either way
        the port refuses once the process is gone. pause: SIGSTOP (the port still accepts connections, nothing
        answers). A TERMed 18.16 stops listening but goes on serving the keep-alive connections it has (the
        proxy's) until its shutdown ends, about 13 s under this load: hence the grace."""
        if mode == "pause":
            os.kill(self.pid, signal.SIGSTOP)
            self.paused = True
            return "SIGSTOP"
        if mode == "stop":
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if not self.alive():
                return "SIGTERM"
        os.kill(self.pid, signal.SIGKILL)
        while self.alive():
            time.sleep(0.02)
        return "SIGKILL" if mode == "kill" else f"SIGTERM, SIGKILL after {grace:g} s"

    def start_again(self, mode):
        if mode == "pause":
            os.kill(self.pid, signal.SIGCONT)
            self.paused = False
            return
        self.vars = self._start(["--reuse", self.dir])

    def remove(self):
        if self.paused:
            try:
                os.kill(self.pid, signal.SIGCONT)
            except OSError:
                pass
        subprocess.run([os.path.join(REPO, "scripts/clickhouse-stop"), self.dir], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


def proc_status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def dir_bytes(path):
    """Bytes allocated on disk under path (du)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def scrape(port):
    """/metrics as {name: sum over its label sets}."""
    status, body = http_call("GET", port, "/metrics", timeout=2.0)
    if status != 200:
        return None
    sums = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name = key.split("{", 1)[0]
        try:
            sums[name] = sums.get(name, 0.0) + float(value)
        except ValueError:
            pass
    return sums


# ---------------------------------------------------------------------------------------------------------------
# The probe

CSV_FIELDS = ["t", "clickhouse", "rss_kib", "spool_file_bytes", "spool_live_bytes", "spool_dir_bytes",
              "spool_undelivered_chunks", "flush_queue_bytes", "buffered_bytes", "receiving_bytes", "sent",
              "acked", "refused_503", "refused_other", "errors", "in_per_s", "refused_per_s", "flushed_rows",
              "out_per_s", "clickhouse_rows", "retries", "lag_ms", "inflight", "proxy_cpu_s"]


class Sampler(threading.Thread):
    def __init__(self, probe):
        super().__init__(daemon=True)
        self.probe = probe
        self.rows = []
        self.stopped = threading.Event()

    def run(self):
        p = self.probe
        previous = None
        tick = 0
        while not self.stopped.is_set():
            tick += 1
            target = p.t0 + tick
            delay = target - time.monotonic()
            if delay > 0 and self.stopped.wait(delay):
                break
            row = {"t": round(time.monotonic() - p.t0, 3), "clickhouse": p.clickhouse_state}
            row["rss_kib"] = proc_status_kib(p.proxy.pid, "VmRSS")
            m = None
            try:
                m = scrape(p.proxy_port)
            except OSError:
                pass
            m = m or {}
            row["spool_file_bytes"] = m.get("batchhouse_spool_bytes")
            row["spool_live_bytes"] = m.get("batchhouse_spool_live_bytes")
            row["spool_undelivered_chunks"] = m.get("batchhouse_spool_undelivered_chunks")
            row["flush_queue_bytes"] = m.get("batchhouse_flush_queue_bytes")
            row["buffered_bytes"] = m.get("batchhouse_buffered_bytes")
            row["receiving_bytes"] = m.get("batchhouse_receiving_bytes")
            row["flushed_rows"] = m.get("batchhouse_flushed_rows_total")
            row["retries"] = m.get("batchhouse_upstream_retries_total")
            row["spool_dir_bytes"] = dir_bytes(p.spool_dir)
            counters = p.counters()
            row["sent"] = counters["sent"]
            row["acked"] = counters["acked"]
            row["refused_503"] = counters["status_503"]
            row["refused_other"] = counters["status_other"]
            row["errors"] = counters["errors"] + counters["timeouts"]
            row["lag_ms"] = counters["lag_us"] / 1000
            row["inflight"] = counters["inflight"]
            row["proxy_cpu_s"] = proc_cpu_s(p.proxy.pid)
            row["clickhouse_rows"] = None
            if p.clickhouse_state == "up":
                try:
                    row["clickhouse_rows"] = int(p.ch.sql(f"SELECT count() FROM {p.table}", timeout=0.8))
                except (OSError, RuntimeError, ValueError):
                    pass
            if previous is not None:
                dt = row["t"] - previous["t"]
                row["in_per_s"] = round((row["acked"] - previous["acked"]) / dt, 1)
                refused = row["refused_503"] + row["refused_other"] + row["errors"]
                refused_before = previous["refused_503"] + previous["refused_other"] + previous["errors"]
                row["refused_per_s"] = round((refused - refused_before) / dt, 1)
                if row["flushed_rows"] is not None and previous["flushed_rows"] is not None:
                    row["out_per_s"] = round((row["flushed_rows"] - previous["flushed_rows"]) / dt, 1)
            self.rows.append(row)
            previous = row


class Probe:
    def __init__(self, a):
        self.a = a
        self.out = os.path.abspath(a.out)
        os.makedirs(self.out, exist_ok=True)
        self.work = tempfile.mkdtemp(prefix="bh-outage-")
        self.spool_dir = os.path.join(self.work, "spool")
        self.ch = None
        self.proxy = None
        self.loadgen = None
        self.sampler = None
        self.clickhouse_state = "up"
        self.t0 = time.monotonic()
        self.counter_file = os.path.join(self.work, "counters")
        with open(self.counter_file, "wb") as f:
            f.write(bytes(COUNTER_BYTES))
        fd = os.open(self.counter_file, os.O_RDONLY)
        self.shared = mmap.mmap(fd, COUNTER_BYTES, prot=mmap.PROT_READ)
        os.close(fd)
        self.status_file = os.path.join(self.work, "statuses")
        self.catchup = []  # (t, landed ids below the id boundary at ClickHouse's return, all landed)
        self.events = {}

    def counters(self):
        return dict(zip(COUNTERS, struct.unpack_from(COUNTER_FORMAT, self.shared, 0)))

    def at(self, name):
        self.events[name] = time.monotonic() - self.t0
        return self.events[name]

    # -- processes

    def start_proxy(self):
        a = self.a
        self.proxy_port = free_port()
        config = os.path.join(self.out, "batchhouse.yaml")
        with open(config, "w") as f:
            f.write(f"""# scripts/probes/outage: a steady load of single-row INSERTs while ClickHouse goes away
listen: 127.0.0.1:{self.proxy_port}
upstream: {{ servers: ["{self.ch.vars['CLICKHOUSE_URL']}"] }}
defaults: {{ strategy: hybrid, max_delay: {a.max_delay}, ack: {a.ack} }}
limits: {{ max_buffer_memory: {size_text(a.memory)} }}
spool: {{ dir: {self.spool_dir}, max_size: {size_text(a.spool_max_size)} }}
dead_letter_dir: {self.work}/dead-letter
""")
        self.proxy_log = os.path.join(self.out, "batchhouse.log")
        log_file = open(self.proxy_log, "w")
        self.proxy = subprocess.Popen([a.binary, "--config", config], stdin=subprocess.DEVNULL, stdout=log_file,
                                      stderr=subprocess.STDOUT)
        log_file.close()
        for _ in range(150):
            if self.proxy.poll() is not None:
                raise SystemExit(f"the proxy exited with status {self.proxy.returncode}; log: {self.proxy_log}")
            try:
                if http_call("GET", self.proxy_port, "/ping", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"the proxy did not answer /ping within 15 s; log: {self.proxy_log}")

    def start_loadgen(self):
        a = self.a
        self.loadgen_log = os.path.join(self.out, "loadgen.log")
        with open(self.loadgen_log, "w") as log_file:
            self.loadgen = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "loadgen", "--port", str(self.proxy_port), "--table",
                 self.table, "--rate", str(a.rate), "--connections", str(a.connections), "--row-bytes",
                 str(a.row_bytes), "--timeout", str(a.request_timeout), "--counters", self.counter_file,
                 "--status-file", self.status_file], stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT)

    def stop_loadgen(self):
        self.loadgen.send_signal(signal.SIGTERM)
        try:
            self.loadgen.wait(timeout=self.a.request_timeout + 30)
        except subprocess.TimeoutExpired:
            log("load generator did not stop; KILL")
            self.loadgen.kill()
            self.loadgen.wait()
        if self.loadgen.returncode != 0:
            with open(self.loadgen_log) as f:
                raise SystemExit(f"load generator failed (status {self.loadgen.returncode}):\n{f.read()[-2000:]}")

    def stop_proxy(self):
        started = time.monotonic()
        self.proxy.send_signal(signal.SIGTERM)
        try:
            status = self.proxy.wait(timeout=120)
        except subprocess.TimeoutExpired:
            log("the proxy did not stop within 120 s of TERM; KILL")
            self.proxy.kill()
            status = self.proxy.wait()
        return status, time.monotonic() - started

    def cleanup(self):
        for proc in (self.loadgen, self.proxy):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if self.sampler is not None:
            self.sampler.stopped.set()
        if self.ch is not None:
            self.ch.remove()
        if self.a.keep:
            log(f"work folder kept (spool, dead letters): {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- the run

    def poll_catchup(self, boundary, until):
        """From ClickHouse's return: rows landed with id < boundary, and all rows, every 0.25 s."""
        while not until.is_set():
            try:
                below, total = self.ch.sql(f"SELECT countIf(id < {boundary}), count() FROM {self.table}",
                                           timeout=1.0).split()
                self.catchup.append((time.monotonic() - self.t0, int(below), int(total)))
            except (OSError, RuntimeError, ValueError):
                pass
            until.wait(0.25)

    def run(self):
        a = self.a
        log(f"output folder {self.out}")
        self.ch = ClickHouse()
        log(f"ClickHouse {self.ch.sql('SELECT version()').strip()} at {self.ch.vars['CLICKHOUSE_URL']}")
        self.table = "outage.events"
        self.ch.sql("CREATE DATABASE IF NOT EXISTS outage")
        self.ch.sql(f"CREATE TABLE {self.table} (id UInt64, ts DateTime DEFAULT now(), pad String) "
                    "ENGINE = MergeTree ORDER BY id")
        self.start_proxy()
        time.sleep(1.0)
        self.rss_idle_kib = proc_status_kib(self.proxy.pid, "VmRSS")
        cpu0 = proc_cpu_s(self.proxy.pid)
        log(f"proxy pid {self.proxy.pid} on 127.0.0.1:{self.proxy_port}, idle RSS {self.rss_idle_kib / 1024:.1f} "
            f"MiB; load {a.rate:g} req/s on {a.connections} connections")

        self.t0 = time.monotonic()
        self.start_loadgen()
        self.sampler = Sampler(self)
        self.sampler.start()
        time.sleep(a.before)

        log(f"ClickHouse goes away ({a.mode}) for {a.outage:g} s")
        self.clickhouse_state = "stopping"
        self.at("signal")
        self.stop_how = self.ch.stop(a.mode, a.term_grace)
        self.at("down")
        self.clickhouse_state = "down"
        log(f"ClickHouse gone {self.events['down'] - self.events['signal']:.1f} s after the signal ({self.stop_how})")
        remaining = self.t0 + self.events["down"] + a.outage - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        self.at("restart")
        self.ch.start_again(a.mode)
        if a.mode == "pause":
            while True:
                try:
                    if http_call("GET", self.ch.port, "/ping", timeout=1.0)[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.05)
        self.at("back")
        self.clickhouse_state = "up"
        self.boundary = self.counters()["sent"]  # every id below it was sent before ClickHouse's return
        log(f"ClickHouse back after {self.events['back'] - self.events['down']:.1f} s "
            f"(start took {self.events['back'] - self.events['restart']:.1f} s); load goes on for {a.after:g} s")
        poller_done = threading.Event()
        poller = threading.Thread(target=self.poll_catchup, args=(self.boundary, poller_done), daemon=True)
        poller.start()
        remaining = self.t0 + self.events["back"] + a.after - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

        self.at("load_stop")
        self.stop_loadgen()
        with open(self.status_file + ".json") as f:
            self.load = json.load(f)
        with open(self.status_file, "rb") as f:
            self.statuses = f.read()
        acked_total = self.statuses.count(ACKED)
        log(f"load stopped: {acked_total} acknowledged of {len(self.statuses)} sent; waiting for the drain "
            f"(up to {a.drain_timeout:g} s)")
        deadline = time.monotonic() + a.drain_timeout
        drained = False
        while time.monotonic() < deadline:
            if self.catchup and self.catchup[-1][2] >= acked_total and self.catchup[-1][0] > self.events["load_stop"]:
                drained = True
                break
            time.sleep(0.25)
        self.at("drained" if drained else "drain_timeout")
        time.sleep(3)  # a few more samples of the tail
        poller_done.set()
        poller.join()
        self.sampler.stopped.set()
        self.sampler.join()
        self.rss_hwm_kib = proc_status_kib(self.proxy.pid, "VmHWM")
        self.proxy_cpu = (proc_cpu_s(self.proxy.pid) or 0) - (cpu0 or 0)
        self.metrics_end = {}
        try:
            self.metrics_end = scrape(self.proxy_port) or {}
        except OSError:
            pass
        self.proxy_exit, self.proxy_stop_s = self.stop_proxy()
        self.proxy = None
        log(f"proxy stopped (exit {self.proxy_exit}, {self.proxy_stop_s:.1f} s); checking rows")
        self.check_rows()
        self.ch_inserts = None
        try:
            self.ch_inserts = int(self.ch.sql("SELECT sum(value) FROM system.events WHERE event = 'InsertQuery'"))
        except (OSError, RuntimeError, ValueError):
            pass
        return self.report()

    def check_rows(self):
        a = self.a
        counts, unique = self.ch.sql(f"SELECT count(), uniqExact(id) FROM {self.table}").split()
        self.landed_rows, self.landed_unique = int(counts), int(unique)
        filler_len = max(1, a.row_bytes - 2 * 7 - 6)
        self.content_bad = int(self.ch.sql(
            f"SELECT countIf(pad != concat(toString(id), '-', '{'x' * filler_len}')) FROM {self.table}"))
        seen = bytearray(len(self.statuses))
        stray = 0  # ids the load generator never sent
        for line in self.ch.sql(f"SELECT id FROM {self.table} FORMAT TabSeparated", timeout=120).split():
            i = int(line)
            if i < len(seen):
                if seen[i] < 255:
                    seen[i] += 1
            else:
                stray += 1
        acked = missing = duplicated = landed_refused = landed_unanswered = 0
        self.missing_sample, self.duplicate_sample = [], []
        for i, (status, n) in enumerate(zip(self.statuses, seen)):
            if status == ACKED:
                acked += 1
                if n == 0:
                    missing += 1
                    if len(self.missing_sample) < 10:
                        self.missing_sample.append(i)
            elif n and status in (REFUSED_503, REFUSED_OTHER):
                landed_refused += 1
            elif n:
                landed_unanswered += 1
            if n > 1:
                duplicated += 1
                if len(self.duplicate_sample) < 10:
                    self.duplicate_sample.append(i)
        self.acked, self.missing, self.duplicated = acked, missing, duplicated
        self.landed_refused, self.landed_unanswered, self.stray = landed_refused, landed_unanswered, stray

    def report(self):
        a = self.a
        ev = self.events
        rows = self.sampler.rows
        back = ev["back"]
        by_status = self.load["by_status"]
        refused = sum(v for k, v in by_status.items() if k != "200")
        no_answer = self.statuses.count(NO_ANSWER)
        rss = [r["rss_kib"] for r in rows if r["rss_kib"]]
        rss_peak = max(rss + [self.rss_idle_kib])
        before = [r["rss_kib"] for r in rows if r["rss_kib"] and ev["signal"] - 5 <= r["t"] < ev["signal"]]
        rss_steady = sorted(before)[len(before) // 2] if before else self.rss_idle_kib
        spool_peak = max([r["spool_file_bytes"] or 0 for r in rows] + [0])
        live_peak = max([r["spool_live_bytes"] or 0 for r in rows] + [0])
        dir_peak = max([r["spool_dir_bytes"] or 0 for r in rows] + [0])
        # Catch-up: rows acknowledged with an id below the boundary (sent before ClickHouse's return).
        target = self.statuses[:self.boundary].count(ACKED)
        catchup = next((t - back for t, below, _ in self.catchup if below >= target), None)
        all_landed = next((t - back for t, _, total in self.catchup
                           if total >= self.acked and t >= ev["load_stop"]), None)
        in_outage = [r for r in rows if ev["down"] <= r["t"] <= back]
        acked_during = (in_outage[-1]["acked"] - in_outage[0]["acked"]) if len(in_outage) > 1 else 0
        first_refusal = self.load.get("first_refusal")
        exactly_once = self.missing == 0 and self.duplicated == 0 and self.content_bad == 0 and \
            self.landed_refused == 0 and self.stray == 0
        load_cpu = self.load["cpu_s"]
        sent = self.load["sent"]
        load_seconds = self.load["seconds"]
        outage_seconds = back - ev["down"]

        checks = [
            ("every insert accepted (0 refused, 0 unanswered)", refused == 0 and no_answer == 0,
             f"{refused} refused, {no_answer} unanswered"),
            ("RSS growth < 64 MiB", (rss_peak - self.rss_idle_kib) / 1024 < 64,
             f"{(rss_peak - self.rss_idle_kib) / 1024:.1f} MiB"),
            ("every row acknowledged before the return landed within 40 s of it",
             catchup is not None and catchup <= 40, "never" if catchup is None else f"{catchup:.1f} s"),
            ("every acknowledged row landed exactly once, before the graceful stop",
             exactly_once and all_landed is not None,
             f"{self.missing} missing, {self.duplicated} duplicated, {self.content_bad} wrong content, "
             f"{self.landed_refused} refused-but-landed" + ("" if all_landed is not None else ", not all landed "
                                                              "before the drain timeout")),
        ]
        passed = all(ok for _, ok, _ in checks)

        lines = []
        say = lines.append
        say(f"Batchhouse outage probe, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: ClickHouse {a.mode} for "
            f"{a.outage:g} s under {a.rate:g} single-row INSERTs/s ({a.connections} connections, ~{a.row_bytes} B rows), "
            f"max_buffer_memory {size_text(a.memory)}, spool.max_size {size_text(a.spool_max_size)}, ack {a.ack}")
        say(f"  timeline: load from 0 s, ClickHouse signalled at {ev['signal']:.1f} s, gone at {ev['down']:.1f} s "
            f"({self.stop_how}), back (/ping) at {back:.1f} s (unavailable {outage_seconds:.1f} s), load stopped "
            f"at {ev['load_stop']:.1f} s")
        say(f"  load:     {sent} sent in {load_seconds:.1f} s ({sent / load_seconds:.0f}/s), max lag behind "
            f"schedule {self.load['max_lag_s'] * 1000:.0f} ms, {self.load['skipped']} slots skipped; load "
            f"generator CPU {load_cpu:.1f} s ({load_cpu / max(sent, 1) * 1e6:.0f} us/request)")
        say(f"  accepted: {self.acked} (200), {acked_during} of them while ClickHouse was away")
        refusal_text = ", ".join(f"{v} x {k}" for k, v in by_status.items() if k != "200") or "none"
        say(f"  refused:  {refused} ({refusal_text}); unanswered (connection error or {a.request_timeout:g} s "
            f"timeout) {no_answer}")
        if first_refusal:
            say(f"            first refusal at {first_refusal['t']:.1f} s ({first_refusal['t'] - ev['down']:+.1f} s "
                f"after ClickHouse went away): {first_refusal['status']} {first_refusal['body'][:160]!r}")
        say(f"  RSS:      idle {self.rss_idle_kib / 1024:.1f} MiB, under load before the outage "
            f"{rss_steady / 1024:.1f} MiB, peak {rss_peak / 1024:.1f} MiB (VmHWM {self.rss_hwm_kib / 1024:.1f}), "
            f"growth {(rss_peak - self.rss_idle_kib) / 1024:.1f} MiB over idle")
        say(f"  spool:    peak {mib(spool_peak):.1f} MiB of segment files (batchhouse_spool_bytes), "
            f"{mib(live_peak):.1f} MiB live (batchhouse_spool_live_bytes), {mib(dir_peak):.1f} MiB du of spool.dir")
        say(f"  delivery: rows acknowledged before the return ({target}) all landed "
            + ("never (within the run)" if catchup is None else f"{catchup:.1f} s after ClickHouse's return")
            + "; every acknowledged row landed "
            + ("not before the drain timeout" if all_landed is None else
               f"{all_landed:.1f} s after the return ({all_landed - (ev['load_stop'] - back):.1f} s after the load "
               "stopped)"))
        say(f"  rows:     ClickHouse count() {self.landed_rows}, uniqExact(id) {self.landed_unique}; acknowledged "
            f"{self.acked}: {self.missing} missing{' ' + str(self.missing_sample) if self.missing_sample else ''}, "
            f"{self.duplicated} duplicated{' ' + str(self.duplicate_sample) if self.duplicate_sample else ''}, "
            f"{self.content_bad} with wrong content; landed without a 200: {self.landed_unanswered} unanswered, "
            f"{self.landed_refused} refused (must be 0), {self.stray} unknown ids")
        say(f"  proxy:    CPU {self.proxy_cpu:.1f} s, graceful stop exit {self.proxy_exit} in {self.proxy_stop_s:.1f} s, "
            f"upstream retries {self.metrics_end.get('batchhouse_upstream_retries_total', 0):.0f}, "
            f"ClickHouse InsertQuery since its last start {self.ch_inserts}")
        say(f"  exactly once: {'yes' if exactly_once else 'NO'}")
        say(f"  files:    {os.path.join(self.out, 'samples.csv')}, {os.path.join(self.out, 'outage.png')}, "
            f"{self.proxy_log}")
        say("Checks" + ("" if a.check else " (informative; --check makes them the exit status)") + ":")
        for text, ok, detail in checks:
            say(f"  {'PASS' if ok else 'FAIL'}  {text}: {detail}")

        self.write_csv(rows, catchup, first_refusal)
        plot_error = plot(self.out, rows, self.plot_info(catchup, first_refusal))
        if plot_error:
            say(f"  (no plot: {plot_error})")
        machine = {
            "accepted": self.acked, "refused": refused, "refused_503": by_status.get("503", 0),
            "unanswered": no_answer, "sent": sent, "rss_idle_mib": round(self.rss_idle_kib / 1024, 1),
            "rss_peak_mib": round(rss_peak / 1024, 1), "rss_growth_mib": round((rss_peak - self.rss_idle_kib) / 1024, 1),
            "spool_peak_mib": round(mib(spool_peak), 1), "spool_live_peak_mib": round(mib(live_peak), 1),
            "catchup_s": "never" if catchup is None else round(catchup, 1),
            "all_landed_s": "never" if all_landed is None else round(all_landed, 1),
            "missing": self.missing, "duplicated": self.duplicated, "exactly_once": "yes" if exactly_once else "no",
            "proxy_cpu_s": round(self.proxy_cpu, 1), "loadgen_cpu_s": round(load_cpu, 1),
            "rate": round(sent / load_seconds), "ch_inserts": self.ch_inserts, "check": "pass" if passed else "fail",
            "png": os.path.join(self.out, "outage.png"), "outage_s": round(outage_seconds, 1),
        }
        say("OUTAGE " + " ".join(f"{k}={v}" for k, v in machine.items()))
        text = "\n".join(lines)
        print(text, flush=True)
        with open(os.path.join(self.out, "summary.txt"), "w") as f:
            f.write(text + "\n")
        return 0 if passed or not a.check else 1

    def write_csv(self, rows, catchup, first_refusal):
        with open(os.path.join(self.out, "samples.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
        with open(os.path.join(self.out, "events.json"), "w") as f:
            json.dump({"plot": self.plot_info(catchup, first_refusal), "boundary_id": self.boundary,
                       "catchup_series": self.catchup, "load": self.load}, f, indent=1)

    def plot_info(self, catchup, first_refusal):
        a = self.a
        return {"events": self.events, "mode": a.mode, "outage": a.outage, "rate": a.rate, "memory": a.memory,
                "spool_max_size": a.spool_max_size, "rss_idle_kib": self.rss_idle_kib, "catchup": catchup,
                "first_refusal": first_refusal}


def replot(folder):
    """outage.py replot FOLDER: outage.png again from samples.csv and events.json."""
    with open(os.path.join(folder, "events.json")) as f:
        info = json.load(f)["plot"]
    rows = []
    with open(os.path.join(folder, "samples.csv"), newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: (v if k == "clickhouse" else (float(v) if v != "" else None)) for k, v in r.items()})
    error = plot(folder, rows, info)
    if error:
        raise SystemExit(error)
    print(os.path.join(folder, "outage.png"))


def plot(folder, rows, info):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        return f"matplotlib missing ({error}); run through scripts/probes/outage"
    a = argparse.Namespace(**{k: info[k] for k in ("mode", "outage", "rate", "memory", "spool_max_size")})
    ev = info["events"]
    catchup, first_refusal, rss_idle_kib = info["catchup"], info["first_refusal"], info["rss_idle_kib"]
    t = [r["t"] for r in rows]

    def series(key, scale=1.0):
        return [None if r.get(key) is None else r[key] * scale for r in rows]

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 9), sharex=True,
                                        gridspec_kw={"height_ratios": [1, 1, 1.3]})
    title = (f"ClickHouse {a.mode} for {a.outage:g} s under {a.rate:g} INSERTs/s; max_buffer_memory "
             f"{size_text(a.memory)}, spool.max_size {size_text(a.spool_max_size)}")
    fig.suptitle(title, fontsize=11)
    for ax in (ax1, ax2, ax3):
        ax.axvspan(ev["signal"], ev["down"], color="tab:red", alpha=0.05, lw=0)
        ax.axvspan(ev["down"], ev["back"], color="tab:red", alpha=0.12, lw=0)
        ax.axvline(ev["load_stop"], color="grey", ls=":", lw=1)
        ax.grid(alpha=0.3)
    ax1.plot(t, series("rss_kib", 1 / 1024), color="tab:blue", label="proxy RSS (VmRSS)")
    ax1.axhline(rss_idle_kib / 1024 + 64, color="tab:blue", ls="--", lw=0.8, alpha=0.6,
                label="idle RSS + 64 MiB (--check bound)")
    ax1.axhline(mib(a.memory), color="tab:purple", ls=":", lw=1, label="max_buffer_memory")
    ax1.set_ylabel("MiB")
    ax1.set_ylim(bottom=0)
    ax1.legend(loc="upper left", fontsize=8)
    ax2.plot(t, series("spool_file_bytes", 1 / 1048576), color="tab:orange", label="spool segment files")
    ax2.plot(t, series("spool_live_bytes", 1 / 1048576), color="tab:brown", ls="--",
             label="spool live (undelivered)")
    ax2.plot(t, series("flush_queue_bytes", 1 / 1048576), color="tab:green", lw=1,
             label="flush queue (sealed batches)")
    ax2.set_ylabel("MiB")
    ax2.set_ylim(bottom=0)
    ax2.legend(loc="upper left", fontsize=8)
    ax3.plot(t, series("in_per_s"), color="tab:blue", label="rows/s in (acknowledged)")
    ax3.plot(t, series("out_per_s"), color="tab:green", label="rows/s out (batchhouse_flushed_rows_total)")
    ax3.plot(t, series("refused_per_s"), color="tab:red", label="refused/s (non-200 or no answer)")
    ax3.set_ylabel("per second")
    # The catch-up burst can be 20x the load: clip it, say how high it went, keep the steady lines readable.
    top = max(a.rate * 2.5, 1.0)
    peaks = [(v, r["t"]) for r in rows for v in [r.get("out_per_s")] if v is not None and v > top]
    ax3.set_ylim(0, top)
    if peaks:
        value, when = max(peaks)
        ax3.annotate(f"out peak {value:,.0f} rows/s (clipped)", (when, top * 0.97), fontsize=8, va="top",
                     ha="left", color="tab:green")
    label_y = top * 0.35
    ax3.set_xlim(left=0)
    ax3.set_xlabel("seconds since the load started (shaded: ClickHouse unavailable, lighter: from the signal to "
                   "the process's end; dotted: load stopped)")
    ax3.legend(loc="upper left", fontsize=8)
    if catchup is not None:
        ax3.axvline(ev["back"] + catchup, color="tab:green", ls="--", lw=0.8)
        ax3.annotate(f"backlog landed +{catchup:.1f} s", (ev["back"] + catchup, label_y), fontsize=8,
                     rotation=90, va="bottom", ha="right", color="tab:green")
    if first_refusal:
        ax3.axvline(first_refusal["t"], color="tab:red", ls="--", lw=0.8)
        ax3.annotate(f"first {first_refusal['status']}", (first_refusal["t"], label_y), fontsize=8, rotation=90,
                     va="bottom", ha="right", color="tab:red")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "outage.png"), dpi=100)
    plt.close(fig)
    return None


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "loadgen":
        loadgen(sys.argv[2:])
        return 0
    if len(sys.argv) > 2 and sys.argv[1] == "replot":
        replot(sys.argv[2])
        return 0
    p = argparse.ArgumentParser(
        prog="scripts/probes/outage",
        description="ClickHouse goes away under a steady load of single-row INSERTs: memory, spool, refusals "
                    "and delivery of the Batchhouse release binary (header of scripts/probes/outage).")
    p.add_argument("--outage", type=float, default=60, help="seconds ClickHouse is away (default 60)")
    p.add_argument("--rate", type=float, default=3000, help="INSERTs per second (default 3000)")
    p.add_argument("--memory", type=parse_size, default=parse_size("32MiB"),
                   help="limits.max_buffer_memory (default 32MiB)")
    p.add_argument("--out", default=None, help="output folder (default a new $TMPDIR/batchhouse-outage-STAMP)")
    p.add_argument("--mode", choices=["stop", "kill", "pause"], default="stop",
                   help="stop: SIGTERM (SIGKILL after --term-grace), the port refuses, then started again on the same "
                        "folder and ports (default); kill: the same with SIGKILL at once; pause: SIGSTOP/SIGCONT "
                        "(connections hang, nothing answers)")
    p.add_argument("--term-grace", type=float, default=2,
                   help="--mode stop: seconds after SIGTERM before SIGKILL (default 2)")
    p.add_argument("--before", type=float, default=10, help="seconds of load before the outage (default 10)")
    p.add_argument("--after", type=float, default=20,
                   help="seconds of load after ClickHouse's return (default 20)")
    p.add_argument("--drain-timeout", type=float, default=120,
                   help="seconds to wait after the load for every acknowledged row (default 120)")
    p.add_argument("--connections", type=int, default=8, help="keep-alive connections (default 8)")
    p.add_argument("--row-bytes", type=int, default=400, help="bytes per row tuple, about (default 400)")
    p.add_argument("--request-timeout", type=float, default=10,
                   help="seconds without an answer before a request counts as unanswered (default 10)")
    p.add_argument("--spool-max-size", type=parse_size, default=parse_size("4GiB"),
                   help="spool.max_size (default 4GiB)")
    p.add_argument("--max-delay", default="1s", help="defaults.max_delay of the hybrid strategy (default 1s)")
    p.add_argument("--ack", choices=["enqueued", "durable"], default="enqueued", help="ack mode (default enqueued)")
    p.add_argument("--binary", default=os.path.join(REPO, ".build/release/batchhouse"),
                   help="the proxy (default .build/release/batchhouse)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (spool, dead letters)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 unless 0 refused, RSS growth < 64 MiB, and every acknowledged row landed exactly "
                        "once (those acknowledged before the return within 40 s of it)")
    a = p.parse_args()
    if a.out is None:
        a.out = os.path.join(os.environ.get("TMPDIR", "/tmp"),
                             "batchhouse-outage-" + time.strftime("%Y%m%d-%H%M%S"))
    if not os.access(a.binary, os.X_OK):
        raise SystemExit(f"no proxy binary at {a.binary}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    probe = Probe(a)
    try:
        return probe.run()
    finally:
        probe.cleanup()


if __name__ == "__main__":
    sys.exit(main())
