"""The aggregate check (docs/testing.md, "Aggregate check"): the write reduction of an `aggregate:` rule on a realistic
stream, asserted by content against a real ClickHouse 18.16. Run it through scripts/aggregate-check, which picks the
Python of scripts/python-env.

    check.py [--seconds N] [--rate R] [--keep]
    check.py --load-only PORT [--seconds N] [--rate R]    # only the load, against any HTTP server on 127.0.0.1:PORT

Main run (arrival-time windows): R events/s (default 5,000) for N seconds (default 60) over 10 endpoints with
Zipf-like frequencies, duration_ms drawn from a lognormal per endpoint (multiples of 1/16 ms, so every figure
compares exactly), each event with a unique id, from 16 keep-alive connections in 2 processes, paced by one token
bucket per process. Client shapes, by share of the requests: 60% single-row JSONEachRow INSERTs (the statement in
the `query` parameter, the row in the body), 15% 20-row JSONEachRow requests, 15% single-row and 10% 10-row Values
INSERTs with a column list (the whole statement in the body): about 1,050 requests/s. Every request must get a 200,
and the achieved rate must be at least 90% of the target. No request is sent from 20 ms before to 5 ms after a whole
second (AGGREGATE_CLOCK_SLACK_MS, + 15 ms before), so a request's send and answer times tell the second the proxy
stamped it with. After the load (and the pattern phase) the last windows are waited for; then 200 more events are
sent and the proxy is stopped with SIGTERM at once: the graceful stop must emit their still open window, and exit 0.
Then ClickHouse, queried directly, must hold exactly what was acknowledged: sum(count) over the target equals the
events acknowledged; per endpoint sum(count), sum(v_sum) (1e-6 relative), min(v_min) and max(v_max) (exactly) equal
what was sent there; at most one row per second of the run per endpoint (+10% + 2); every row consistent (avg x
count = sum, min <= p50 <= p95 <= p99 <= max, count-weighted avg = sum/count). Each (window, endpoint) row is checked
against the events that arrived in its second: count, sum, min and max, and the quantiles of rows with at most
exact_values events (ClickHouse's quantileExact: sorted[floor(q * n)]), all exactly, or between bounds for the few
requests whose answer came back across a second. The proxy's rows_in/rows_out counters must agree. The figures: raw
rows in, rows written, upstream INSERT statements (system.query_log, log_queries=1 through upstream.settings), the
row reduction 1 - rows_written/rows_in (asserted >= 0.95) and 1 - inserts/requests.

Pattern phase (event-time windows, `time_column: ts`, another table): P steady seconds (default 10) then one second
in which one endpoint's durations are 10x, all sent at once with explicit timestamps (Unix seconds, text UTC and ISO
8601 with an offset). Every (window, endpoint) row must equal what was sent to it: count, sum, min, max, avg, and
the quantiles exactly (quantileExact) up to exact_values events, within 1% of rank beyond (one endpoint sends 1,500
events a window, so the t-digest is used). A `spike` row for that endpoint in that window must be in the patterns
table with the window's average and the mean of the previous ones as baseline; the spike and drop findings must be
exactly those README's rules give on the averages sent (so none on the steady series); anomalies are compared with
the rule (population standard deviation) and printed; and batchhouse_patterns_total{table="<db>.events2",
kind="spike"} >= 1 in /metrics.

Environment: BATCHHOUSE_BIN (default .build/debug/batchhouse; nothing is built here), CLICKHOUSE_URL (use that
server instead of starting one with scripts/clickhouse-start; the check's database is then named after its PID and
dropped at the end), AGGREGATE_SECONDS, AGGREGATE_RATE, AGGREGATE_CONNECTIONS (default 16), AGGREGATE_PROCESSES
(default 2), AGGREGATE_PATTERN_SECONDS (default 10; at least 3), AGGREGATE_CLOCK_SLACK_MS (default 5: how far the
proxy's arrival stamp may be from the client's send and answer times; 0 turns the quiet time off), AGGREGATE_MIX
(the requests' shares of the shapes, e.g. json-1:0.8,json-20:0.05,values-1:0.1,values-10:0.05). Everything
started here is stopped by its PID at the end. Exit status 1 when a check failed. Python standard library only.
"""

import argparse
import asyncio
import bisect
import datetime
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "scripts", "oracle"))

from common import ClickHouse, Started, free_port, http_get, start_clickhouse, wait_until  # noqa: E402

ENDPOINTS = ["/api/%d" % index for index in range(10)]
# Zipf-like: endpoint k gets weight 1/(k+1); /api/0 about 34% of the events, /api/9 about 3.4%.
WEIGHTS = [1.0 / (index + 1) for index in range(len(ENDPOINTS))]
# Lognormal per endpoint: median (ms) and sigma of log(duration).
MEDIANS = [12.0, 25.0, 8.0, 40.0, 90.0, 15.0, 150.0, 5.0, 60.0, 300.0]
SIGMAS = [0.4, 0.5, 0.6, 0.45, 0.7, 0.55, 0.8, 0.35, 0.65, 0.9]
# Durations are multiples of 1/16 ms: exactly representable, short in decimal, so any parser reads them exactly and
# every sum of them is exact; min, max and quantileExact results can be compared with ==.
QUANTUM = 16.0
QUANTILES = [0.5, 0.95, 0.99]
QUANTILE_COLUMNS = ["duration_ms_p50", "duration_ms_p95", "duration_ms_p99"]
EXACT_VALUES = 1000
# Client shapes: (name, rows per request, share of the requests). 75% of the requests carry one row; 5,000 events/s
# make about 1,050 requests/s, which a debug build takes on the 2-core machine with room to spare (it spends about
# 0.5 ms of CPU per request; with single-row requests only it took 2,390 requests/s there, half the target).
SHAPES = [("json-1", 1, 0.60), ("json-20", 20, 0.15), ("values-1", 1, 0.15), ("values-10", 10, 0.10)]
if os.environ.get("AGGREGATE_MIX"):
    # name:share,...: the requests' shares of the shapes above, e.g. json-1:0.8,json-20:0.05,values-1:0.15
    _shares = dict((name, float(share)) for name, share in
                   (item.split(":") for item in os.environ["AGGREGATE_MIX"].split(",") if item))
    SHAPES = [(name, rows, _shares.get(name, 0.0)) for name, rows, _ in SHAPES]
# Before each whole second, this much more quiet time than the slack, for the answers of the last requests.
QUIET_ANSWER = 0.015
# Events sent after the load's last window was emitted, just before SIGTERM.
TAIL_EVENTS = 200
MIN_RATE_SHARE = 0.90
MIN_ROW_REDUCTION = 0.95
# Pattern phase.
BURST_ENDPOINT = 3
BURST_FACTOR = 10.0
PATTERN_EVENTS = 40          # per endpoint and window
DIGEST_ENDPOINT = 0
DIGEST_EVENTS = 1500         # per window for DIGEST_ENDPOINT: beyond EXACT_VALUES, so a t-digest
DIGEST_RANK_TOLERANCE = 0.01

failures = []


def say(*parts):
    print("aggregate-check:", *parts, file=sys.stderr, flush=True)


def fail(message):
    failures.append(message)
    say("FAIL:", message)


def env_number(name, default, kind=float):
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return kind(text)
    except ValueError:
        raise SystemExit("aggregate-check: %s=%r is not a number" % (name, text))


def quantized(value):
    return max(1.0, round(value * QUANTUM)) / QUANTUM


def number_text(value):
    """A duration as the client writes it: 23.4375, 12 (integral values without a fraction, as JSON encoders do)."""
    return "%d" % value if value == int(value) else repr(value)


def quantile_exact(sorted_values, level):
    """ClickHouse's quantileExact: the element at index floor(level * n) of the sorted values (n - 1 for level 1)."""
    n = len(sorted_values)
    index = int(level * n) if level < 1 else n - 1
    return sorted_values[min(index, n - 1)]


def relative_difference(a, b):
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


# --- metrics --------------------------------------------------------------------------------------------------------

def metric_values(text, name):
    """{labels text: value} of one metric in a Prometheus text exposition."""
    found = {}
    for match in re.finditer(r"^%s(\{[^}]*\})? (\S+)$" % re.escape(name), text, re.M):
        found[match.group(1) or ""] = float(match.group(2))
    return found


def metric(text, name, **labels):
    """The value of the sample of `name` whose labels include `labels`, summed over the rest; 0 when absent."""
    total = 0.0
    for label_text, value in metric_values(text, name).items():
        have = dict(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', label_text))
        if all(have.get(key) == wanted for key, wanted in labels.items()):
            total += value
    return total


# --- HTTP client: keep-alive connections on asyncio, one request at a time each ---------------------------------------

class AnswerError(Exception):
    pass


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: write a request, read its answer (Content-Length or chunked)."""

    def __init__(self):
        self.transport = None
        self.buffer = bytearray()
        self.waiter = None
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc):
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(AnswerError("connection closed before the answer (%s)" % (exc or "EOF")))

    def data_received(self, data):
        self.buffer += data
        if self.waiter is not None and not self.waiter.done():
            try:
                answer = self.parse()
            except AnswerError as error:
                self.waiter.set_exception(error)
                self.transport.close()
                return
            if answer is not None:
                self.waiter.set_result(answer)

    def parse(self):
        """(status, body, keep_alive) once a whole answer is buffered, else None."""
        buffer = self.buffer
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        lines = bytes(buffer[:head_end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise AnswerError("not an HTTP answer: %r" % lines[0][:80])
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = head_end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            position = start
            while True:
                line_end = buffer.find(b"\r\n", position)
                if line_end < 0:
                    return None
                size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
                if size == 0:
                    # Trailers, if any, end with an empty line.
                    end = buffer.find(b"\r\n", line_end + 2)
                    while end >= 0 and end != line_end + 2:
                        line_end = end
                        end = buffer.find(b"\r\n", line_end + 2)
                    if end < 0:
                        return None
                    consumed = end + 2
                    break
                if len(buffer) < line_end + 2 + size + 2:
                    return None
                body += buffer[line_end + 2:line_end + 2 + size]
                position = line_end + 2 + size + 2
        else:
            length = int(headers.get("content-length", "0"))
            if len(buffer) < start + length:
                return None
            body = bytes(buffer[start:start + length])
            consumed = start + length
        del buffer[:consumed]
        keep_alive = headers.get("connection", "").lower() != "close"
        return status, bytes(body), keep_alive

    async def request(self, data, timeout):
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        try:
            return await asyncio.wait_for(self.waiter, timeout)
        finally:
            self.waiter = None


async def connect(port):
    _, protocol = await asyncio.get_running_loop().create_connection(Connection, "127.0.0.1", port)
    return protocol


def http_request(port, method, target, body):
    head = ("%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: batchhouse-aggregate-check\r\n"
            "Content-Type: text/plain; charset=UTF-8\r\nContent-Length: %d\r\n\r\n"
            % (method, target, port, len(body)))
    return head.encode() + body


class Bucket:
    """A token bucket of events with reservations: take(n) waits until n tokens have accrued (at `rate`, at most
    `burst` saved up) and returns False instead once that moment is past `stop`."""

    def __init__(self, rate, burst, stop):
        self.rate, self.burst, self.stop = rate, burst, stop
        self.tokens = 0.0
        self.last = time.monotonic()

    async def take(self, count):
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        wait = (count - self.tokens) / self.rate if self.tokens < count else 0.0
        if now + wait >= self.stop:
            return False
        self.tokens -= count
        if wait > 0:
            await asyncio.sleep(wait)
        return True


# --- the main run's load --------------------------------------------------------------------------------------------

class _Collect:
    """Stands in for the pipe when the load runs in this process: the state is already here."""

    def __init__(self, load):
        self.load = load

    def send(self, state):
        pass

    def close(self):
        pass


class Load:
    """The stream: events, requests, pacing, and what was sent and acknowledged."""

    def __init__(self, port, database, rate, seconds, connections, slack, processes=2, seed=20261202):
        self.port, self.database, self.rate, self.seconds = port, database, rate, seconds
        self.connections, self.slack, self.seed = connections, slack, seed
        # The quiet time around each whole second: the slack on both sides, and before it room for an answer.
        self.quiet_after = slack
        self.quiet_before = slack + QUIET_ANSWER if slack > 0 else 0.0
        self.processes = max(1, min(processes, connections))
        # Process `part` of `processes` numbers its events part + 1, part + 1 + processes, ...: unique ids.
        self.part = 0
        self.next_id = 1
        total = sum(WEIGHTS)
        self.cumulative = []
        running = 0.0
        for weight in WEIGHTS:
            running += weight / total
            self.cumulative.append(running)
        self.mus = [math.log(median) for median in MEDIANS]
        request_weights = [share for _, _, share in SHAPES]
        total = sum(request_weights)
        self.shape_cumulative = []
        running = 0.0
        for weight in request_weights:
            running += weight / total
            self.shape_cumulative.append(running)
        table = "%s.events" % database
        self.json_target = "/?query=" + urllib.parse.quote("INSERT INTO %s FORMAT JSONEachRow" % table)
        self.values_statement = "INSERT INTO %s (endpoint, duration_ms, id) VALUES " % table
        # What was sent, per endpoint, of acknowledged requests: count, sum, min, max.
        self.acked = [[0, 0.0, math.inf, -math.inf] for _ in ENDPOINTS]
        self.acked_events = 0
        self.unknown_events = 0      # sent without an answer: may or may not be in
        self.refused_events = 0      # refused with an answer: not in
        self.requests = 0
        self.requests_by_shape = {name: 0 for name, _, _ in SHAPES}
        self.statuses = {}
        self.errors = []
        self.latencies = []
        # Arrival seconds: (second, endpoint) -> values certainly in that second / values possibly in it.
        self.certain = {}
        self.possible = {}
        self.first_send = None
        self.last_answer = None
        self.reconnects = 0

    def event(self, rng):
        endpoint = bisect.bisect_left(self.cumulative, rng.random())
        endpoint = min(endpoint, len(ENDPOINTS) - 1)
        value = quantized(rng.lognormvariate(self.mus[endpoint], SIGMAS[endpoint]))
        event_id = self.next_id
        self.next_id += self.processes
        return event_id, endpoint, value

    def build(self, shape, events, now):
        name = SHAPES[shape][0]
        if name.startswith("json"):
            body = "".join('{"id":%d,"ts":%d,"endpoint":"%s","duration_ms":%s,"status":%d}\n'
                           % (event_id, now, ENDPOINTS[endpoint], number_text(value), 200 if event_id % 50 else 500)
                           for event_id, endpoint, value in events)
            return http_request(self.port, "POST", self.json_target, body.encode())
        body = self.values_statement + ",".join("('%s',%s,%d)" % (ENDPOINTS[endpoint], number_text(value), event_id)
                                                for event_id, endpoint, value in events)
        return http_request(self.port, "POST", "/", body.encode())

    def record(self, shape, events, status, body, sent_at, answered_at):
        self.requests += 1
        self.requests_by_shape[SHAPES[shape][0]] += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if self.first_send is None:
            self.first_send = sent_at
        self.last_answer = answered_at
        if status != 200:
            if status == 0:
                self.unknown_events += len(events)
            else:
                self.refused_events += len(events)
            if len(self.errors) < 10:
                self.errors.append("%s rows %s: %s" % (SHAPES[shape][0], status,
                                                       body.decode(errors="replace").strip()[:300]))
            return
        self.latencies.append(answered_at - sent_at)
        self.acked_events += len(events)
        first = int(math.floor(sent_at - self.slack))
        last = int(math.floor(answered_at + self.slack))
        for _, endpoint, value in events:
            figures = self.acked[endpoint]
            figures[0] += 1
            figures[1] += value
            if value < figures[2]:
                figures[2] = value
            if value > figures[3]:
                figures[3] = value
            if first == last:
                self.certain.setdefault((first, endpoint), []).append(value)
            else:
                for second in range(first, last + 1):
                    self.possible.setdefault((second, endpoint), []).append(value)

    async def sender(self, index, bucket):
        rng = random.Random(self.seed * 1000 + index)
        connection = None
        while True:
            shape = bisect.bisect_left(self.shape_cumulative, rng.random())
            shape = min(shape, len(SHAPES) - 1)
            rows = SHAPES[shape][1]
            if not await bucket.take(rows):
                break
            sent_at = time.time()
            if self.quiet_after > 0:
                # Nothing is sent from quiet_before before to quiet_after after a whole second, so (answers being
                # quick) the second each request arrived in is known, and every window's content can be checked
                # exactly.
                fraction = sent_at - math.floor(sent_at)
                if fraction < self.quiet_after or fraction > 1.0 - self.quiet_before:
                    await asyncio.sleep(self.quiet_after - fraction + (1.0 if fraction > self.quiet_after else 0.0))
                    sent_at = time.time()
            events = [self.event(rng) for _ in range(rows)]
            data = self.build(shape, events, int(sent_at))
            status, body = 0, b""
            try:
                if connection is None or connection.closed:
                    if connection is not None:
                        self.reconnects += 1
                    connection = await connect(self.port)
                status, body, keep_alive = await connection.request(data, timeout=30)
                if not keep_alive:
                    connection.transport.close()
                    connection = None
            except (OSError, AnswerError, asyncio.TimeoutError) as error:
                body = ("no answer: %s: %s" % (type(error).__name__, error)).encode()
                if connection is not None:
                    connection.transport.close()
                connection = None
            self.record(shape, events, status, body, sent_at, time.time())
        if connection is not None:
            connection.transport.close()

    async def run_async(self, connections, rate, stop):
        # Up to 50 ms of events saved up, plus the quiet time around each second: a sender that fell behind
        # catches up a little, not with a blast.
        bucket = Bucket(rate, max(20.0, rate * (0.05 + self.quiet_before + self.quiet_after)), stop)
        await asyncio.gather(*(self.sender(self.part * 1000 + index, bucket) for index in range(connections)))

    STATE = ("acked", "acked_events", "unknown_events", "refused_events", "requests", "requests_by_shape",
             "statuses", "errors", "latencies", "certain", "possible", "first_send", "last_answer", "reconnects")

    def run_part(self, part, stop, results):
        """One process's share of the connections and the rate; its tallies go to `results` (a pipe)."""
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.part = part
        self.next_id = part + 1
        connections = self.connections // self.processes + (1 if part < self.connections % self.processes else 0)
        asyncio.run(self.run_async(connections, self.rate * connections / self.connections, stop))
        results.send({name: getattr(self, name) for name in self.STATE})
        results.close()

    def merge(self, state):
        for index, (count, value_sum, low, high) in enumerate(state["acked"]):
            figures = self.acked[index]
            figures[0] += count
            figures[1] += value_sum
            figures[2] = min(figures[2], low)
            figures[3] = max(figures[3], high)
        for name in ("acked_events", "unknown_events", "refused_events", "requests", "reconnects"):
            setattr(self, name, getattr(self, name) + state[name])
        for name in ("requests_by_shape", "statuses"):
            mine = getattr(self, name)
            for key, count in state[name].items():
                mine[key] = mine.get(key, 0) + count
        self.errors.extend(state["errors"])
        self.latencies.extend(state["latencies"])
        for name in ("certain", "possible"):
            mine = getattr(self, name)
            for key, values in state[name].items():
                mine.setdefault(key, []).extend(values)
        if state["first_send"] is not None:
            self.first_send = min(self.first_send or math.inf, state["first_send"])
            self.last_answer = max(self.last_answer or -math.inf, state["last_answer"])

    def run(self):
        """The load from `processes` processes (the kernel's share of each send is large on loopback, and one
        Python process then tops out near 3,500 requests/s on a loaded 2-core machine)."""
        started = time.monotonic()
        stop = started + self.seconds
        if self.processes == 1:
            self.run_part(0, stop, _Collect(self))
        else:
            context = multiprocessing.get_context("fork")
            children = []
            for part in range(self.processes):
                receiving, sending = context.Pipe(duplex=False)
                child = context.Process(target=self.run_part, args=(part, stop, sending), daemon=True)
                child.start()
                sending.close()
                children.append((child, receiving))
            for child, receiving in children:
                try:
                    self.merge(receiving.recv())
                except EOFError:
                    self.errors.append("a load process (pid %d) died without its tallies" % child.pid)
                    self.unknown_events += 1
                child.join(10)
        self.elapsed = time.monotonic() - started
        # The rate over the load's own span, first send to last answer.
        span = (self.last_answer - self.first_send) if self.first_send is not None else self.elapsed
        self.span = max(span, 1e-9)
        self.achieved = self.acked_events / self.span
        self.main_requests = self.requests
        return self

    async def tail(self, count):
        """`count` more events in 20-row JSONEachRow requests over one connection, recorded like the rest: sent
        just before the stop, so their window is still open then and only the graceful stop can emit it. Returns
        the second they were sent in."""
        rng = random.Random(self.seed + 99)
        shape = [name for name, _, _ in SHAPES].index("json-20")
        self.next_id = 10 ** 9 + 1  # beyond every id the load processes gave out
        fraction = time.time() % 1.0
        if fraction > 0.8:
            await asyncio.sleep(1.0 - fraction + 0.01)
        first_second = int(time.time())
        connection = await connect(self.port)
        for _ in range(0, count, 20):
            events = [self.event(rng) for _ in range(20)]
            sent_at = time.time()
            try:
                status, body, _ = await connection.request(self.build(shape, events, int(sent_at)), timeout=30)
            except (OSError, AnswerError, asyncio.TimeoutError) as error:
                status, body = 0, ("no answer: %s" % error).encode()
            self.record(shape, events, status, body, sent_at, time.time())
        connection.transport.close()
        return first_second

    def figures(self):
        latencies = sorted(self.latencies)
        p = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000) if latencies else \
            (lambda q: float("nan"))
        return ("%d requests (%s), %d events in %.1f s: %.0f events/s acknowledged (target %.0f, %.1f%%), "
                "%.0f requests/s, %d connections, latency p50 %.2f ms p99 %.2f ms max %.2f ms, statuses %s" % (
                    self.requests, ", ".join("%s %d" % item for item in self.requests_by_shape.items()),
                    self.acked_events, self.span, self.achieved, self.rate, 100.0 * self.achieved / self.rate,
                    self.requests / self.span, self.connections, p(0.5), p(0.99), p(1.0),
                    ", ".join("%s: %d" % (status or "no answer", count)
                              for status, count in sorted(self.statuses.items()))))


# --- the pattern phase ----------------------------------------------------------------------------------------------

def pattern_stream(database, seconds, seed=7):
    """[(window_start, [(endpoint, value, ts text or number), ...])]: `seconds` steady windows, then one where
    BURST_ENDPOINT's durations are BURST_FACTOR times as long. An hour ago, on whole seconds."""
    rng = random.Random(seed)
    base = int(time.time()) - 3600
    windows = []
    for index in range(seconds + 1):
        start = base + index
        events = []
        for endpoint in range(len(ENDPOINTS)):
            count = DIGEST_EVENTS if endpoint == DIGEST_ENDPOINT else PATTERN_EVENTS
            factor = BURST_FACTOR if (index == seconds and endpoint == BURST_ENDPOINT) else 1.0
            for _ in range(count):
                value = quantized(factor * rng.lognormvariate(math.log(MEDIANS[endpoint]), 0.25))
                events.append((endpoint, value))
        rng.shuffle(events)
        windows.append((start, events))
    return windows


def pattern_requests(port, database, windows):
    """Per window, the requests that carry its events: 100-row JSONEachRow requests with the time as Unix seconds,
    or as ISO 8601 with a +02:00 offset; 50-row Values requests with it as 'YYYY-MM-DD hh:mm:ss' (UTC)."""
    table = "%s.events2" % database
    json_target = "/?query=" + urllib.parse.quote("INSERT INTO %s FORMAT JSONEachRow" % table)
    per_window = []
    for start, events in windows:
        utc = datetime.datetime.fromtimestamp(start, datetime.timezone.utc)
        iso = utc.astimezone(datetime.timezone(datetime.timedelta(hours=2))).isoformat()
        text = utc.strftime("%Y-%m-%d %H:%M:%S")
        requests = []
        position = 0
        number = 0
        while position < len(events):
            kind = number % 3
            size = 50 if kind == 2 else 100
            chunk = events[position:position + size]
            position += size
            number += 1
            if kind == 2:
                body = ("INSERT INTO %s (ts, endpoint, duration_ms) VALUES " % table) + ",".join(
                    "('%s','%s',%s)" % (text, ENDPOINTS[endpoint], number_text(value)) for endpoint, value in chunk)
                requests.append((http_request(port, "POST", "/", body.encode()), len(chunk)))
            else:
                ts = '"%s"' % iso if kind == 1 else "%d" % start
                body = "".join('{"ts":%s,"endpoint":"%s","duration_ms":%s}\n' % (ts, ENDPOINTS[endpoint],
                                                                                 number_text(value))
                               for endpoint, value in chunk)
                requests.append((http_request(port, "POST", json_target, body.encode()), len(chunk)))
        per_window.append(requests)
    return per_window


async def send_pattern_phase(port, per_window, parallel=4):
    """Sends the windows in order, each one's requests over `parallel` connections, the next window only once the
    previous one is all answered. Returns (requests, events acknowledged, [errors])."""
    connections = [await connect(port) for _ in range(parallel)]
    acknowledged, errors, requests = 0, [], 0
    for window_requests in per_window:
        queue = list(window_requests)

        async def worker(connection):
            nonlocal acknowledged, requests
            while queue:
                data, rows = queue.pop(0)
                requests += 1
                try:
                    status, body, _ = await connection.request(data, timeout=30)
                except (OSError, AnswerError, asyncio.TimeoutError) as error:
                    errors.append("no answer: %s" % error)
                    return
                if status == 200:
                    acknowledged += rows
                else:
                    errors.append("%d: %s" % (status, body.decode(errors="replace").strip()[:300]))

        await asyncio.gather(*(worker(connection) for connection in connections))
    for connection in connections:
        connection.transport.close()
    return requests, acknowledged, errors


# --- setup ----------------------------------------------------------------------------------------------------------

TARGET_COLUMNS = ("window_start DateTime, endpoint String, count UInt64, duration_ms_min Float64, "
                  "duration_ms_max Float64, duration_ms_avg Float64, duration_ms_sum Float64, "
                  "duration_ms_p50 Float64, duration_ms_p95 Float64, duration_ms_p99 Float64")


def create_tables(clickhouse, database):
    clickhouse.query("CREATE DATABASE IF NOT EXISTS %s" % database)
    for table in ("events_1s", "events2_1s"):
        clickhouse.query("CREATE TABLE %s.%s (%s) ENGINE = MergeTree ORDER BY (window_start, endpoint)"
                         % (database, table, TARGET_COLUMNS))
    clickhouse.query("CREATE TABLE %s.patterns (window_start DateTime, table String, group_key String, "
                     "column String, kind String, value Float64, baseline Float64) ENGINE = MergeTree "
                     "ORDER BY window_start" % database)


def write_proxy_config(path, clickhouse_url, port, database):
    rule = """    aggregate:
      into: {db}.{into}
      window: 1s{time}
      group_by: [endpoint]
      values: [duration_ms]
      quantiles: [0.5, 0.95, 0.99]
      keep_raw: false
      exact_values: {exact}
      patterns: {{ into: {db}.patterns, spike: 2.0, drop: 0.5, sigma: 3, history: 10 }}"""
    with open(path, "w") as handle:
        handle.write("""listen: 127.0.0.1:{port}
upstream:
  servers: [{url}]
  compression: none
  connect_timeout: 2s
  timeout: 10s
  settings: {{ log_queries: 1 }}
defaults:
  strategy: hybrid
  max_rows: 100000
  max_delay: 1s
tables:
  {db}.events:
{events}
  {db}.events2:
{events2}
""".format(port=port, url=clickhouse_url, db=database,
           events=rule.format(db=database, into="events_1s", time="", exact=EXACT_VALUES),
           events2=rule.format(db=database, into="events2_1s", time="\n      time_column: ts", exact=EXACT_VALUES)))


def target_rows(clickhouse, database, table):
    """[(window_start, endpoint, count, min, max, avg, sum, p50, p95, p99)] of a target table."""
    text = clickhouse.query(
        "SELECT toUInt32(window_start), endpoint, count, duration_ms_min, duration_ms_max, duration_ms_avg, "
        "duration_ms_sum, duration_ms_p50, duration_ms_p95, duration_ms_p99 FROM %s.%s FORMAT TSV"
        % (database, table))
    rows = []
    for line in text.splitlines():
        if not line:
            continue
        fields = line.split("\t")
        rows.append((int(fields[0]), fields[1], int(fields[2])) + tuple(float(f) for f in fields[3:]))
    return rows


def upstream_inserts_sql(database, table):
    """INSERT statements into `database`.`table` that ClickHouse finished (query_log type 2, QueryFinish), as the
    proxy writes them (backquoted) or unquoted."""
    return ("SELECT count() FROM system.query_log WHERE type = 2 AND (query LIKE 'INSERT INTO `%s`.`%s`%%' "
            "OR query LIKE 'INSERT INTO %s.%s %%')" % (database, table, database, table))


def scalar(clickhouse, sql):
    text = clickhouse.query(sql).strip()
    return float(text) if text else 0.0


# --- checks ---------------------------------------------------------------------------------------------------------

def check_row_consistency(label, rows):
    """avg × count = sum, min <= p50 <= p95 <= p99 <= max, finite figures, count > 0. Returns the bad rows."""
    bad = []
    for row in rows:
        start, endpoint, count, low, high, avg, total, p50, p95, p99 = row
        figures = (low, high, avg, total, p50, p95, p99)
        problems = []
        if count <= 0:
            problems.append("count %d" % count)
        if not all(math.isfinite(value) for value in figures):
            problems.append("a figure that is not finite")
        else:
            if not low <= p50 <= p95 <= p99 <= high:
                problems.append("not min <= p50 <= p95 <= p99 <= max")
            if not low <= avg <= high:
                problems.append("avg outside [min, max]")
            if count and relative_difference(avg * count, total) > 1e-9:
                problems.append("avg x count %r != sum %r" % (avg * count, total))
        if problems:
            bad.append("%s window %d %s: %s (%r)" % (label, start, endpoint, "; ".join(problems), row))
    return bad


def check_main(clickhouse, database, load, rows, summary):
    table = "%s.events_1s" % database
    total = int(scalar(clickhouse, "SELECT sum(count) FROM %s" % table))
    if load.unknown_events:
        fail("%d events were sent without an answer: the totals below may include them" % load.unknown_events)
    if total != load.acked_events:
        fail("sum(count) over %s is %d, but %d events were acknowledged (%+d)" % (
            table, total, load.acked_events, total - load.acked_events))

    # Per endpoint, computed by ClickHouse.
    text = clickhouse.query(
        "SELECT endpoint, sum(count), sum(duration_ms_sum), min(duration_ms_min), max(duration_ms_max), count(), "
        "sum(duration_ms_avg * count) FROM %s GROUP BY endpoint ORDER BY endpoint FORMAT TSV" % table)
    landed = {}
    for line in text.splitlines():
        fields = line.split("\t")
        landed[fields[0]] = (int(fields[1]), float(fields[2]), float(fields[3]), float(fields[4]), int(fields[5]),
                             float(fields[6]))
    seconds = int(math.floor(load.last_answer + load.slack)) - int(math.floor(load.first_send - load.slack)) + 1
    row_limit = int(seconds * 1.1) + 2
    endpoint_lines = []
    for index, endpoint in enumerate(ENDPOINTS):
        count, value_sum, low, high = load.acked[index]
        got = landed.pop(endpoint, None)
        if got is None:
            if count:
                fail("%s: no rows for %s, which was sent %d events" % (table, endpoint, count))
            continue
        got_count, got_sum, got_min, got_max, got_rows, weighted = got
        problems = []
        if got_count != count:
            problems.append("sum(count) %d, sent %d" % (got_count, count))
        if relative_difference(got_sum, value_sum) > 1e-6:
            problems.append("sum(duration_ms_sum) %r, sent sum %r" % (got_sum, value_sum))
        if got_min != low:
            problems.append("min(duration_ms_min) %r, sent min %r" % (got_min, low))
        if got_max != high:
            problems.append("max(duration_ms_max) %r, sent max %r" % (got_max, high))
        if got_rows > row_limit:
            problems.append("%d rows for a run of %d seconds (at most %d expected)" % (got_rows, seconds, row_limit))
        if got_count and relative_difference(weighted / got_count, got_sum / got_count) > 1e-9:
            problems.append("count-weighted avg %r != sum/count %r" % (weighted / got_count, got_sum / got_count))
        if problems:
            fail("%s %s: %s" % (table, endpoint, "; ".join(problems)))
        endpoint_lines.append("%-7s %7d events %4d rows  sum %14.4f  min %9.4f  max %10.4f  avg %8.3f%s" % (
            endpoint, got_count, got_rows, got_sum, got_min, got_max, got_sum / max(got_count, 1),
            "" if not problems else "  MISMATCH"))
    if landed:
        fail("%s has rows for endpoints never sent: %s" % (table, ", ".join(sorted(landed))))

    bad = check_row_consistency(table, rows)
    if bad:
        fail("%d rows of %s are inconsistent, e.g.:\n    %s" % (len(bad), table, "\n    ".join(bad[:5])))

    # Each (window, endpoint) against the events that can have arrived in that second.
    by_key = {}
    for row in rows:
        by_key.setdefault((row[0], ENDPOINTS.index(row[1]) if row[1] in ENDPOINTS else -1), []).append(row)
    keys = set(by_key) | set(load.certain)
    wrong, exact_checked, bracketed, digest_rows, partial_keys = [], 0, 0, 0, 0
    for key in sorted(keys):
        second, endpoint = key
        got = by_key.get(key, [])
        certain = sorted(load.certain.get(key, []))
        possible = sorted(certain + load.possible.get(key, []))
        name = ENDPOINTS[endpoint] if endpoint >= 0 else "?"
        if not got:
            if certain:
                wrong.append("window %d %s: no row, but %d events certainly arrived in that second"
                             % (second, name, len(certain)))
            continue
        if len(got) > 1:
            partial_keys += 1
        count = sum(row[2] for row in got)
        value_sum = sum(row[6] for row in got)
        low = min(row[3] for row in got)
        high = max(row[4] for row in got)
        problems = []
        if not len(certain) <= count <= len(possible):
            problems.append("count %d, but %d events certainly and %d possibly arrived then"
                            % (count, len(certain), len(possible)))
        elif possible:
            if not (sum(certain) - 1e-6 <= value_sum <= sum(possible) + 1e-6):
                problems.append("sum %r outside [%r, %r]" % (value_sum, sum(certain), sum(possible)))
            if certain and not possible[0] <= low <= certain[0]:
                problems.append("min %r outside [%r, %r]" % (low, possible[0], certain[0]))
            if certain and not certain[-1] <= high <= possible[-1]:
                problems.append("max %r outside [%r, %r]" % (high, certain[-1], possible[-1]))
            if len(got) == 1 and count <= EXACT_VALUES:
                row = got[0]
                for level, column, value in zip(QUANTILES, QUANTILE_COLUMNS, row[7:10]):
                    k = int(level * count)
                    lower = possible[min(k, len(possible) - 1)]
                    upper = certain[k] if k < len(certain) else possible[-1]
                    if lower == upper:
                        exact_checked += 1
                    else:
                        bracketed += 1
                    if not lower <= value <= upper:
                        problems.append("%s %r, expected %s" % (column, value, lower if lower == upper
                                                                 else "within [%r, %r]" % (lower, upper)))
            elif len(got) == 1:
                digest_rows += 1
        if problems:
            wrong.append("window %d %s: %s" % (second, name, "; ".join(problems)))
    if wrong:
        fail("%d (window, endpoint) rows of %s disagree with the events that arrived in their second, e.g.:\n    %s"
             % (len(wrong), table, "\n    ".join(wrong[:8])))
    summary.append("main: per endpoint (from ClickHouse; each equals what was sent unless marked):")
    summary.extend("  " + line for line in endpoint_lines)
    summary.append("main: %d (window, endpoint) keys, %d with partial rows; quantiles of exact rows: %d checked "
                   "exactly, %d bracketed (a request straddled the second); %d t-digest rows (> %d events) checked "
                   "for order and range; %d keys disagreeing" % (
                       len(keys), partial_keys, exact_checked, bracketed, digest_rows, EXACT_VALUES, len(wrong)))
    return total, seconds


def check_pattern_phase(clickhouse, database, windows, rows, summary):
    table = "%s.events2_1s" % database
    expected = {}
    for start, events in windows:
        for endpoint, value in events:
            expected.setdefault((start, ENDPOINTS[endpoint]), []).append(value)
    got = {}
    for row in rows:
        got.setdefault((row[0], row[1]), []).append(row)
    wrong = []
    bad = check_row_consistency(table, rows)
    exact, digest = 0, 0
    averages = {}
    for key in sorted(set(expected) | set(got)):
        values = sorted(expected.get(key, []))
        found = got.get(key, [])
        if not values:
            wrong.append("window %d %s: %d rows, nothing was sent there" % (key[0], key[1], len(found)))
            continue
        if len(found) != 1:
            wrong.append("window %d %s: %d rows, expected 1 (all of its events arrived before it was emitted)"
                         % (key[0], key[1], len(found)))
            if not found:
                continue
        row = found[0]
        n = len(values)
        value_sum = math.fsum(values)
        averages[key] = value_sum / n
        problems = []
        if row[2] != n:
            problems.append("count %d, sent %d" % (row[2], n))
        if row[3] != values[0]:
            problems.append("min %r, sent %r" % (row[3], values[0]))
        if row[4] != values[-1]:
            problems.append("max %r, sent %r" % (row[4], values[-1]))
        if relative_difference(row[5], value_sum / n) > 1e-9:
            problems.append("avg %r, sent %r" % (row[5], value_sum / n))
        if relative_difference(row[6], value_sum) > 1e-9:
            problems.append("sum %r, sent %r" % (row[6], value_sum))
        for level, column, value in zip(QUANTILES, QUANTILE_COLUMNS, row[7:10]):
            if n <= EXACT_VALUES:
                exact += 1
                want = quantile_exact(values, level)
                if value != want:
                    problems.append("%s %r, quantileExact of what was sent is %r" % (column, value, want))
            else:
                digest += 1
                below = bisect.bisect_left(values, value) / n
                at_most = bisect.bisect_right(values, value) / n
                if not below - DIGEST_RANK_TOLERANCE <= level <= at_most + DIGEST_RANK_TOLERANCE:
                    problems.append("%s %r has rank %.4f..%.4f among what was sent, not %.2f +- %.2f (t-digest)"
                                    % (column, value, below, at_most, level, DIGEST_RANK_TOLERANCE))
        if problems:
            wrong.append("window %d %s (%d events): %s" % (key[0], key[1], n, "; ".join(problems)))
    if bad:
        fail("%d rows of %s are inconsistent, e.g.:\n    %s" % (len(bad), table, "\n    ".join(bad[:5])))
    if wrong:
        fail("%d (window, endpoint) rows of %s differ from what was sent, e.g.:\n    %s"
             % (len(wrong), table, "\n    ".join(wrong[:8])))
    summary.append("patterns phase: %d windows x %d endpoints, %d rows in %s; quantiles: %d compared exactly "
                   "(quantileExact), %d t-digest ones within %.0f%% of rank; %d rows differing" % (
                       len(windows), len(ENDPOINTS), len(rows), table, exact, digest, DIGEST_RANK_TOLERANCE * 100,
                       len(wrong)))
    return averages


def predicted_findings(series, history=10, spike=2.0, drop=0.5, sigma=3.0):
    """The findings README's rules (PatternHistory's, exactly) give on `series`, {endpoint: [(window_start, average)]}
    in emission order: {(window_start, group_key, kind): (value, baseline)}, and the keys too close to a threshold
    to call (1e-9 relative). Level: against the mean m and sample standard deviation s (n - 1) of the last
    `history` averages, once there are min(history, 3): spike above spike x m, drop below drop x m, else, once there
    are `history` of them, anomaly beyond sigma x s. Trend: the last 4 averages and this one strictly rising (falling), by more than 20% of the first."""
    predicted, borderline = {}, set()

    def near(a, b):
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1e-300)

    for endpoint, points in series.items():
        key = json.dumps({"endpoint": endpoint}, separators=(",", ":"))
        earlier = []
        for start, value in points:
            recent = earlier[-history:]
            if len(recent) >= min(history, 3):
                mean = sum(recent) / len(recent)
                deviation = math.sqrt(sum((v - mean) ** 2 for v in recent) / (len(recent) - 1)) if len(recent) > 1 else 0.0
                if len(recent) < history:
                    deviation = 0.0
                if mean > 0 and (near(value, spike * mean) or near(value, drop * mean)) or \
                        deviation > 0 and near(abs(value - mean), sigma * deviation):
                    borderline.update((start, key, kind) for kind in ("spike", "drop", "anomaly"))
                if mean > 0 and value > spike * mean:
                    predicted[(start, key, "spike")] = (value, mean)
                elif mean > 0 and value < drop * mean:
                    predicted[(start, key, "drop")] = (value, mean)
                elif deviation > 0 and abs(value - mean) > sigma * deviation:
                    predicted[(start, key, "anomaly")] = (value, mean)
            if len(earlier) >= 4 and earlier[-4] != 0:
                window = earlier[-4:] + [value]
                first = window[0]
                pairs = list(zip(window, window[1:]))
                change = (value - first) / abs(first)
                if near(abs(change), 0.2):
                    borderline.update((start, key, kind) for kind in ("trend_up", "trend_down"))
                if all(x < y for x, y in pairs) and change > 0.2:
                    predicted[(start, key, "trend_up")] = (value, first)
                elif all(x > y for x, y in pairs) and -change > 0.2:
                    predicted[(start, key, "trend_down")] = (value, first)
            earlier.append(value)
    return predicted, borderline


def read_findings(clickhouse, database):
    text = clickhouse.query(
        "SELECT toUInt32(window_start), table, group_key, column, kind, value, baseline FROM %s.patterns "
        "ORDER BY window_start, group_key, kind FORMAT TSV" % database)
    findings = []
    for line in text.splitlines():
        fields = line.split("\t")
        findings.append((int(fields[0]), fields[1], fields[2], fields[3], fields[4], float(fields[5]),
                         float(fields[6])))
    return findings


def compare_findings(label, source, series, findings, summary, skip_windows=()):
    """Every finding of `source` in the patterns table against the rules applied to `series` (the averages, window
    by window): the same (window, group, kind) set for every kind, and the same value and baseline."""
    predicted, borderline = predicted_findings(series)
    found = {(f[0], f[2], f[4]): (f[5], f[6]) for f in findings if f[1] == source and f[3] == "duration_ms"}
    others = [f for f in findings if f[1] == source and f[3] != "duration_ms"]
    if others:
        fail("%s: findings for a column the rule does not summarise: %s" % (label, others[:3]))
    skipped = {key for key in set(found) | set(predicted) if key in borderline or key[0] in skip_windows}
    have, want = set(found) - skipped, set(predicted) - skipped
    if have != want:
        fail("%s: pattern findings of %s differ from what README's rules give on the averages: found but not "
             "predicted %s; predicted but not found %s" % (label, source, sorted(have - want)[:6] or "none",
                                                           sorted(want - have)[:6] or "none"))
    off = ["%s: found value %r baseline %r, predicted %r %r" % (key, found[key][0], found[key][1], *predicted[key])
           for key in sorted(have & want)
           if relative_difference(found[key][0], predicted[key][0]) > 1e-9
           or relative_difference(found[key][1], predicted[key][1]) > 1e-9]
    if off:
        fail("%s: %d findings with another value or baseline than predicted, e.g.:\n    %s"
             % (label, len(off), "\n    ".join(off[:5])))
    def kinds(keys):
        counted = {}
        for key in keys:
            counted[key[2]] = counted.get(key[2], 0) + 1
        return ", ".join("%s %d" % item for item in sorted(counted.items())) or "none"

    judged = sum(len(points) for points in series.values())
    at_stop = [key for key in found if key[0] in skip_windows]
    if at_stop:
        fail("%s: the window the graceful stop emitted early is partial and must not be judged, but has findings %s"
             % (label, sorted(at_stop)[:6]))
    at_threshold = [key for key in skipped if key[0] not in skip_windows]
    summary.append("%s: %d averages judged, findings %s: %s the rules' prediction%s%s" % (
        label, judged, kinds(have), "all equal to" if have == want and not off else "NOT equal to",
        "; %d at a threshold, not called" % len(at_threshold) if at_threshold else "",
        "; none in the window the graceful stop emitted early" if skip_windows else ""))
    return found


def check_patterns(clickhouse, database, windows, averages, metrics_text, findings, summary):
    source = "%s.events2" % database
    burst_start = windows[-1][0]
    burst_key = json.dumps({"endpoint": ENDPOINTS[BURST_ENDPOINT]}, separators=(",", ":"))
    mine = [f for f in findings if f[1] == source]
    spikes = [f for f in mine if f[4] == "spike" and f[2] == burst_key and f[0] == burst_start
              and f[3] == "duration_ms"]
    if not spikes:
        fail("no spike row in %s.patterns for table %s, group %s, window %d; its findings: %s" % (
            database, source, burst_key, burst_start, [f for f in mine if f[2] == burst_key] or "none"))
    else:
        finding = spikes[0]
        want_value = averages.get((burst_start, ENDPOINTS[BURST_ENDPOINT]))
        history = [averages[(start, ENDPOINTS[BURST_ENDPOINT])] for start, _ in windows[:-1]][-10:]
        want_baseline = sum(history) / len(history)
        if want_value is None or relative_difference(finding[5], want_value) > 1e-9:
            fail("spike value %r, the window's average is %r" % (finding[5], want_value))
        if relative_difference(finding[6], want_baseline) > 1e-6:
            fail("spike baseline %r, the mean of the %d previous averages is %r" % (finding[6], len(history),
                                                                                 want_baseline))
    # Every series, by the rules, on the averages of what was sent.
    series = {endpoint: [(start, averages[(start, endpoint)]) for start, _ in windows if (start, endpoint) in averages]
              for endpoint in ENDPOINTS}
    compare_findings("patterns phase", source, series, findings, summary)
    spike_metric = metric(metrics_text, "batchhouse_patterns_total", table=source, kind="spike")
    spike_rows = len([f for f in mine if f[4] == "spike"])
    if spike_metric < 1 or spike_metric != spike_rows:
        fail('batchhouse_patterns_total{table="%s",kind="spike"} is %g in /metrics; %d spike rows in ClickHouse'
             % (source, spike_metric, spike_rows))
    summary.append("patterns phase: the burst (%s x%g in window %d): %s; "
                   'batchhouse_patterns_total{table="%s",kind="spike"} %g' % (
                       ENDPOINTS[BURST_ENDPOINT], BURST_FACTOR, burst_start,
                       ("spike, value %.4f, baseline %.4f" % (spikes[0][5], spikes[0][6])) if spikes else "NOT FOUND",
                       source, spike_metric))


# --- the run --------------------------------------------------------------------------------------------------------

def load_only(args):
    say("load only: %.0f events/s for %.0f s against 127.0.0.1:%d" % (args.rate, args.seconds, args.load_only))
    load = Load(args.load_only, "aggregate_check", args.rate, args.seconds, args.connections, args.slack / 1000.0,
                args.processes)
    load.run()
    print("load: " + load.figures())
    print("load: per endpoint sent: " + ", ".join("%s %d" % (ENDPOINTS[i], f[0]) for i, f in enumerate(load.acked)))
    print("load: sum of durations %r" % sum(f[1] for f in load.acked))
    for error in load.errors:
        print("  error: " + error)
    ok = load.achieved >= MIN_RATE_SHARE * args.rate and not load.errors
    print("load: %s" % ("ok" if ok else "FAILED (below %.0f%% of the target or errors)" % (MIN_RATE_SHARE * 100)))
    return 0 if ok else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=env_number("AGGREGATE_SECONDS", 60.0))
    parser.add_argument("--rate", type=float, default=env_number("AGGREGATE_RATE", 5000.0))
    parser.add_argument("--connections", type=int, default=env_number("AGGREGATE_CONNECTIONS", 16, int))
    parser.add_argument("--processes", type=int, default=env_number("AGGREGATE_PROCESSES", 2, int),
                        help="load processes the connections are spread over")
    parser.add_argument("--pattern-seconds", type=int, default=env_number("AGGREGATE_PATTERN_SECONDS", 10, int))
    parser.add_argument("--slack", type=float, default=env_number("AGGREGATE_CLOCK_SLACK_MS", 5.0),
                        help="ms the proxy's arrival stamp may lie outside a request's send..answer interval; "
                             "nothing is sent from this + 15 ms before to this after a whole second")
    parser.add_argument("--load-only", type=int, metavar="PORT",
                        help="only run the load against an HTTP server on 127.0.0.1:PORT and print its rate")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (logs, config, metrics) and, with CLICKHOUSE_URL, the database")
    args = parser.parse_args()
    if args.load_only:
        return load_only(args)
    if args.pattern_seconds < 3:
        say("AGGREGATE_PATTERN_SECONDS must be at least 3 (a spike needs 3 earlier windows)")
        return 2

    began = time.monotonic()
    binary = os.path.abspath(os.environ.get("BATCHHOUSE_BIN") or os.path.join(REPO, ".build/debug/batchhouse"))
    if not os.access(binary, os.X_OK):
        say("batchhouse binary not found: %s (build it, or set BATCHHOUSE_BIN)" % binary)
        return 1
    say("binary %s; %.0f events/s for %.0f s over %d connections; pattern phase %d + 1 windows" % (
        binary, args.rate, args.seconds, args.connections, args.pattern_seconds))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="bh-aggregate-check.")
    started = Started(say)
    timings = {}
    summary = []
    figures = []
    clickhouse = None
    reused = bool(os.environ.get("CLICKHOUSE_URL"))
    database = "aggregate_check_%d" % os.getpid() if reused else "aggregate_check"
    try:
        step = time.monotonic()
        if reused:
            url = os.environ["CLICKHOUSE_URL"]
        else:
            url = start_clickhouse(started, work)["CLICKHOUSE_URL"]
        clickhouse = ClickHouse(url)
        if not clickhouse.wait_ready(30):
            raise RuntimeError("ClickHouse at %s does not answer /ping" % url)
        version = clickhouse.query("SELECT version()").strip()
        create_tables(clickhouse, database)
        timings["ClickHouse start"] = time.monotonic() - step

        step = time.monotonic()
        port = free_port()
        config = os.path.join(work, "batchhouse.yaml")
        write_proxy_config(config, url, port, database)
        log_path = os.path.join(work, "batchhouse.log")
        proxy = started.popen("batchhouse", [binary, "serve", "--config", config], log_path, term_timeout=30)
        if not wait_until(lambda: proxy.poll() is None and (http_get(port, "/ping", 1) or (0,))[0] == 200, 30):
            raise RuntimeError("the proxy did not answer /ping (exit %s; log: %s)" % (proxy.poll(), log_path))
        timings["proxy start"] = time.monotonic() - step
        say("ClickHouse %s at %s, proxy on 127.0.0.1:%d, database %s" % (version, url, port, database))

        # The main run.
        step = time.monotonic()
        load = Load(port, database, args.rate, args.seconds, args.connections, args.slack / 1000.0,
                    args.processes).run()
        timings["load"] = time.monotonic() - step
        say("load: " + load.figures())
        summary.append("main: " + load.figures())
        if load.errors:
            fail("%d of %d requests not answered 200, e.g.:\n    %s" % (
                load.requests - load.statuses.get(200, 0), load.requests, "\n    ".join(load.errors[:5])))
        if load.achieved < MIN_RATE_SHARE * args.rate:
            fail("achieved %.0f events/s, below %.0f%% of the target %.0f" % (
                load.achieved, MIN_RATE_SHARE * 100, args.rate))

        # The pattern phase, on another table with event-time windows, while the main run's last windows close.
        step = time.monotonic()
        windows = pattern_stream(database, args.pattern_seconds)
        per_window = pattern_requests(port, database, windows)
        pattern_events = sum(len(events) for _, events in windows)
        pattern_sent, pattern_acked, pattern_errors = asyncio.run(send_pattern_phase(port, per_window))
        timings["pattern phase send"] = time.monotonic() - step
        if pattern_errors:
            fail("pattern phase: %d requests not answered 200, e.g.:\n    %s" % (
                len(pattern_errors), "\n    ".join(pattern_errors[:5])))
        summary.append("patterns phase: %d events in %d requests, %d acknowledged" % (
            pattern_events, pattern_sent, pattern_acked))

        # The last windows: every acknowledged event in ClickHouse (window 1 s, then the flush).
        step = time.monotonic()

        def landed():
            return (int(scalar(clickhouse, "SELECT sum(count) FROM %s.events_1s" % database)) >= load.acked_events
                    and int(scalar(clickhouse, "SELECT sum(count) FROM %s.events2_1s" % database))
                    >= pattern_acked)

        if not wait_until(landed, 20, interval=0.25):
            say("not every acknowledged event in ClickHouse 20 s after the load; stopping the proxy anyway")
        before_stop = int(scalar(clickhouse, "SELECT count() FROM %s.events_1s" % database))
        answer = http_get(port, "/metrics")
        metrics_text = answer[1].decode(errors="replace") if answer else ""
        with open(os.path.join(work, "metrics.txt"), "w") as handle:
            handle.write(metrics_text)
        main_acked, main_last_answer = load.acked_events, load.last_answer
        timings["last windows"] = time.monotonic() - step

        # A graceful stop emits the open windows: a last few events, then SIGTERM at once.
        step = time.monotonic()
        tail_second = asyncio.run(load.tail(TAIL_EVENTS))
        tail_acked = load.acked_events - main_acked
        status = started.stop(proxy, 30)
        timings["tail and proxy stop"] = time.monotonic() - step
        if status != 0:
            fail("the proxy exited with %s after SIGTERM, not 0 (log: %s)" % (status, log_path))

        # Checks, by content, straight from ClickHouse.
        step = time.monotonic()
        rows = target_rows(clickhouse, database, "events_1s")
        rows_written = len(rows)
        stop_rows = [row for row in rows if row[0] >= tail_second]
        stop_count = sum(row[2] for row in stop_rows)
        summary.append("main: %d events sent %.1f s after the load, just before SIGTERM: the graceful stop wrote %d "
                       "rows (%d events) for their window" % (tail_acked, tail_second - main_last_answer,
                                                              len(stop_rows), stop_count))
        if stop_count != tail_acked or len(stop_rows) != rows_written - before_stop:
            fail("the graceful stop: %d events were acknowledged just before SIGTERM; ClickHouse has %d rows with %d "
                 "events for their window, and %d rows more than before the stop" % (
                     tail_acked, len(stop_rows), stop_count, rows_written - before_stop))
        total, seconds = check_main(clickhouse, database, load, rows, summary)
        source = "%s.events" % database
        rows_in_metric = metric(metrics_text, "batchhouse_aggregate_rows_in_total", table=source)
        rows_out_metric = metric(metrics_text, "batchhouse_aggregate_rows_out_total", table=source)
        partial_metric = metric(metrics_text, "batchhouse_aggregate_partial_windows_total", table=source)
        late_metric = metric(metrics_text, "batchhouse_aggregate_late_rows_total", table=source)
        if rows_in_metric != main_acked:
            fail("batchhouse_aggregate_rows_in_total{table=%r} is %g, %d events were acknowledged"
                 % (source, rows_in_metric, main_acked))
        if rows_out_metric != before_stop:
            fail("batchhouse_aggregate_rows_out_total{table=%r} is %g before the stop, ClickHouse then held %d rows"
                 % (source, rows_out_metric, before_stop))

        clickhouse.query("SYSTEM FLUSH LOGS")
        inserts = {}
        for table in ("events_1s", "events2_1s", "patterns"):
            try:
                inserts[table] = int(scalar(clickhouse, upstream_inserts_sql(database, table)))
            except Exception as error:  # noqa: BLE001: 18.16 has no query_log until something is logged
                inserts[table] = None
                fail("no INSERT count from system.query_log (%s): was log_queries=1 applied?" % error)
        flushed_batches = metric(metrics_text, "batchhouse_flushed_batches_total", table="%s.events_1s" % database)
        raw_into_source = int(scalar(clickhouse, upstream_inserts_sql(database, "events"))) \
            if inserts["events_1s"] is not None else 0
        if raw_into_source:
            fail("%d INSERTs into the source table %s reached ClickHouse (keep_raw: false)" % (raw_into_source, source))
        insert_count = inserts["events_1s"]
        if insert_count is not None and insert_count == 0:
            fail("system.query_log shows no INSERT into %s.events_1s" % database)
        row_reduction = 1.0 - rows_written / max(load.acked_events, 1)
        insert_reduction = (1.0 - insert_count / max(load.requests, 1)) if insert_count is not None else float("nan")
        if row_reduction < MIN_ROW_REDUCTION:
            fail("row reduction %.4f below %.2f" % (row_reduction, MIN_ROW_REDUCTION))
        figures = [
            ("target rate", "%.0f events/s for %.0f s, %d connections" % (args.rate, args.seconds, args.connections)),
            ("achieved rate", "%.0f events/s (%.1f%%), %.0f requests/s" % (
                load.achieved, 100.0 * load.achieved / args.rate, load.main_requests / load.span)),
            ("client requests", "%d (%s; the last %d with the tail), all 200: %s" % (
                load.requests, ", ".join("%s %d" % item for item in load.requests_by_shape.items()),
                load.requests - load.main_requests, "yes" if not load.errors else "NO")),
            ("raw rows in (acknowledged)", "%d (proxy: rows_in_total %d before the last %d)" % (
                load.acked_events, rows_in_metric, tail_acked)),
            ("rows written to events_1s", "%d (%d seconds x %d endpoints; partial windows %d, late rows %d)" % (
                rows_written, seconds, len(ENDPOINTS), partial_metric, late_metric)),
            ("sum(count) in events_1s", "%d" % total),
            ("upstream INSERTs into events_1s", "%s (query_log; proxy flushed_batches_total %d)" % (
                insert_count, flushed_batches)),
            ("upstream INSERTs, other tables", "events2_1s %s, patterns %s (both runs)" % (
                inserts["events2_1s"], inserts["patterns"])),
            ("row reduction", "%.4f (1 - %d/%d; required >= %.2f)" % (row_reduction, rows_written, load.acked_events,
                                                                      MIN_ROW_REDUCTION)),
            ("insert reduction", "%.5f (1 - %s/%d)" % (insert_reduction, insert_count, load.requests)),
        ]

        # Pattern findings on the steady main stream, against the rules applied to the averages it wrote (one row per
        # window and endpoint; the window the stop emitted is not judged the same way, and left out).
        findings = read_findings(clickhouse, database)
        series = {}
        for row in sorted(rows):
            if row[0] < tail_second:
                series.setdefault(row[1], []).append((row[0], row[5]))
        compare_findings("main", source, series, findings, summary,
                         skip_windows={row[0] for row in rows if row[0] >= tail_second})

        pattern_rows = target_rows(clickhouse, database, "events2_1s")
        averages = check_pattern_phase(clickhouse, database, windows, pattern_rows, summary)
        check_patterns(clickhouse, database, windows, averages, metrics_text, findings, summary)
        timings["checks"] = time.monotonic() - step
    except Exception as error:  # noqa: BLE001: report, stop everything, fail
        fail("%s: %s" % (type(error).__name__, error))
    finally:
        step = time.monotonic()
        started.stop_all()
        if reused and clickhouse is not None and not failures and not args.keep:
            try:
                clickhouse.query("DROP DATABASE IF EXISTS %s" % database)
            except Exception:  # noqa: BLE001
                pass
        timings["teardown"] = time.monotonic() - step
        if args.keep or failures:
            say("work folder kept: %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print("aggregate check summary:")
    for line in summary:
        print("  " + line)
    if figures:
        width = max(len(name) for name, _ in figures)
        print("  write reduction:")
        for name, value in figures:
            print("    %-*s  %s" % (width, name, value))
    print("  timings: " + ", ".join("%s %.1f s" % item for item in timings.items())
          + "; total %.1f s" % (time.monotonic() - began))
    if failures:
        print("aggregate check: %d check(s) failed" % len(failures))
        for message in failures:
            print("  - " + message.splitlines()[0])
        return 1
    print("aggregate check: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
