"""Shared pieces of the fault suite: rows derivable from their id, a small ClickHouse HTTP client, ports, logs.

Python 3 standard library only.
"""

import datetime
import hashlib
import http.client
import socket
import sys
import time
import urllib.parse

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
