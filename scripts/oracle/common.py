"""Shared pieces of the fault suite and the checks beside it (scripts/monitoring, scripts/aggregate): rows derivable
from their id, a small ClickHouse HTTP client, ports, logs, and the processes a run starts.

Python 3 standard library only.
"""

import datetime
import hashlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DATE_ZERO = datetime.date(2020, 1, 1)
BAD_DATE = "not-a-date"


def payload(row_id, length=24):
    """The payload string of a row: hex of SHA-256 over the id, repeated to `length` characters.

    Derivable from the id alone, so the oracle can tell an intact row from a damaged one.
    """
    digest = hashlib.sha256(b"batchhouse-%d" % row_id).hexdigest()
    while len(digest) < length:
        digest += hashlib.sha256(digest.encode()).hexdigest()
    return digest[:length]


def row_date(row_id):
    """The Date column of a good row, also derived from the id."""
    return (DATE_ZERO + datetime.timedelta(days=row_id % 1000)).isoformat()


def values_row(row_id, length=24, bad=False):
    """One Values tuple: (id, 'payload', 'date'); a bad row has a date ClickHouse refuses (the proxy's scanner
    does not check types, so it accepts it)."""
    return "(%d,'%s','%s')" % (row_id, payload(row_id, length), BAD_DATE if bad else row_date(row_id))


def free_port():
    """A loopback TCP port with nothing bound to it right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def log(*parts):
    print("fault-suite:", *parts, file=sys.stderr, flush=True)


class Started:
    """Everything a run started, stopped in reverse order by PID; `say` prints its notes."""

    def __init__(self, say=log):
        self.say = say
        self.processes = []  # (name, Popen, term timeout)
        self.clickhouse_dir = None

    def popen(self, name, argv, log_path, term_timeout=15, **kw):
        log_file = open(log_path, "wb")
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                   restore_signals=True, **kw)
        log_file.close()
        self.processes.append((name, process, term_timeout))
        return process

    def stop(self, process, term_timeout, name="process"):
        """TERM, then KILL after term_timeout; the exit status (None when it had to be killed)."""
        if process.poll() is not None:
            return process.returncode
        os.kill(process.pid, signal.SIGTERM)
        try:
            return process.wait(term_timeout)
        except subprocess.TimeoutExpired:
            self.say("%s (pid %d) still running %d s after TERM, killing it" % (name, process.pid, term_timeout))
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
            return None

    def stop_clickhouse(self):
        if self.clickhouse_dir:
            directory, self.clickhouse_dir = self.clickhouse_dir, None
            subprocess.run([os.path.join(REPO, "scripts/clickhouse-stop"), directory], stdout=sys.stderr,
                           stderr=sys.stderr)

    def stop_all(self):
        for name, process, term_timeout in reversed(self.processes):
            self.stop(process, term_timeout, name)
        self.processes = []
        self.stop_clickhouse()


def start_clickhouse(started, work):
    """A ClickHouse of the run's own in `work`/clickhouse (scripts/clickhouse-start); its KEY=value lines."""
    directory = os.path.join(work, "clickhouse")
    # Known before it starts: a TERM during clickhouse-start still stops what it started (clickhouse-stop finds the
    # server by the folder's pid file).
    started.clickhouse_dir = directory
    result = subprocess.run([os.path.join(REPO, "scripts/clickhouse-start"), directory], stdout=subprocess.PIPE,
                            stderr=sys.stderr, text=True)
    if result.returncode != 0:
        raise RuntimeError("scripts/clickhouse-start failed")
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def http_get(port, path, timeout=5):
    """(status, body bytes) of a GET on 127.0.0.1:port, or None without an answer."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        return response.status, body
    except (OSError, http.client.HTTPException):
        return None


def wait_until(predicate, timeout, interval=0.2):
    """The first truthy value of `predicate()` within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


class ClickHouseError(Exception):
    pass


class ClickHouse:
    """Straight to ClickHouse over HTTP (never through Batchhouse): the oracle's view of what landed."""

    def __init__(self, url):
        parsed = urllib.parse.urlparse(url)
        self.url = url
        self.host = parsed.hostname
        self.port = parsed.port or 8123

    def query(self, sql, timeout=30):
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request("POST", "/", body=sql.encode())
            response = connection.getresponse()
            body = response.read().decode(errors="replace")
            if response.status != 200:
                raise ClickHouseError("%d from ClickHouse for %r: %s" % (response.status, sql[:120], body[:400]))
            return body
        finally:
            connection.close()

    def ping(self, timeout=1.0):
        try:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            connection.request("GET", "/ping")
            ok = connection.getresponse().read() == b"Ok.\n"
            connection.close()
            return ok
        except OSError:
            return False

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return True
            time.sleep(0.2)
        return False

    def rows(self, table):
        """{id: [(payload, date, count), ...]} for every row of `table`."""
        text = self.query(
            "SELECT id, payload, toString(d), count() FROM %s GROUP BY id, payload, d FORMAT TSV" % table
        )
        found = {}
        for line in text.splitlines():
            if not line:
                continue
            row_id, row_payload, row_date_text, count = line.split("\t")
            found.setdefault(int(row_id), []).append((row_payload, row_date_text, int(count)))
        return found

    def ids_present(self, table, ids):
        if not ids:
            return set()
        text = self.query(
            "SELECT DISTINCT id FROM %s WHERE id IN (%s) FORMAT TSV" % (table, ",".join(str(i) for i in ids))
        )
        return {int(line) for line in text.splitlines() if line}
