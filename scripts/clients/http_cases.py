"""ClickHouse's own HTTP functional tests (tests/queries/0_stateless/*.sh that use curl), reproduced in our own
words: each case runs straight against the upstream and through the proxy, and the two transcripts (status, body,
the headers the original test looks at) must be equal. Run against ClickHouse 18.16 and the modern front, in the
proxy's default ack mode (enqueued) and with `ack: flushed`.

EXPECTED_FAILURES lists the differences known today, each with its reason. A difference that is not listed fails
the run; a listed one that no longer happens is printed ("expected failure now passes") so the integrator can
remove it. The goal: only 00379 (system.processes shows the proxy's port, not the client's) stays."""

import argparse
import gzip
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HTTP, Proxy, log  # noqa: E402

TOOL = "http-cases"

# CASE, CASE@ack, CASE@ack@upstream or CASE@*@upstream (ack: enqueued | flushed; upstream: 18.16 | modern) -> why
# it differs.
# Empty this list as features land; 00379 stays (no proxy can show the client's port).
EXPECTED_FAILURES = {
    "00379": "system.processes shows the port of the connection ClickHouse sees: the proxy's, never the client's",
    # `ack: enqueued` answers once the rows are read structurally and buffered: values ClickHouse refuses although
    # they are well-formed (a number where 18.16 wants a string, a JSON field the table lacks) are refused only at
    # the flush, and go to the dead-letter folder. `ack: flushed` answers with ClickHouse's own refusal.
    "00339@enqueued@18.16": "18.16 refuses [123] for Array(String) when it reads the values; enqueued answered before",
    "00374@enqueued@18.16": "18.16 refuses a JSONEachRow field the table lacks; enqueued answered before",
}

KEEP_HEADERS_NONE = ()


class Runner:
    """One run of one case against one URL; records what the original test's expectation looks at."""

    def __init__(self, url, tag, upstream_url):
        self.url = url.rstrip("/")
        parsed = urllib.parse.urlparse(url)
        self.host, self.port = parsed.hostname, parsed.port
        self.tag = tag                    # hc_d_00177 / hc_p_00177: database and session names of this run
        self.db = tag
        self.setup = HTTP(upstream_url)   # set-up straight to the upstream, not part of the transcript
        self.records = []

    # -- requests
    def http(self, label, method="POST", params=None, body=None, headers=None, keep=KEEP_HEADERS_NONE,
             decode=True, path="/"):
        query = urllib.parse.urlencode(params or {}, quote_via=urllib.parse.quote)
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            if isinstance(body, str):
                body = body.encode()
            connection.request(method, path + ("?" + query if query else ""), body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
            got = {k.lower(): v for k, v in response.getheaders()}
        finally:
            connection.close()
        if decode:
            data = decode_body(data, got.get("content-encoding"))
        self.record(label, response.status, data, {k: got.get(k.lower()) for k in keep})
        return response.status, data

    def sql(self, label, statement, params=None, **options):
        return self.http(label, body=statement, params=params, **options)

    def curl(self, label, args, stdin=None, keep=KEEP_HEADERS_NONE):
        done = subprocess.run(["curl", "-sS", "-D", "/dev/stderr", "-w", "\n%{http_code}"] + args, input=stdin,
                              capture_output=True, timeout=60)
        out = done.stdout
        body, _, status = out.rpartition(b"\n")
        headers = {}
        for line in done.stderr.decode(errors="replace").splitlines():
            if ":" in line and not line.startswith("curl:"):
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        self.record(label, int(status or 0), body, {k: headers.get(k.lower()) for k in keep})
        return int(status or 0), body

    def record(self, label, status, body, headers=None):
        if isinstance(body, bytes):
            body = body.decode(errors="replace")
        self.records.append((self.normalize(label), status, self.normalize(body),
                             {k: self.normalize(v) for k, v in (headers or {}).items()}))

    def note(self, label, value):
        self.records.append((self.normalize(label), None, self.normalize(str(value)), {}))

    def normalize(self, text):
        if text is None:
            return None
        text = text.replace(self.tag, "TAG")
        text = re.sub(r"hc_[a-z]+_[a-z0-9_-]+", "TAG", text)
        # What differs between any two runs: times, dates, query ids.
        text = re.sub(r'"elapsed": ?[0-9.e+-]+', '"elapsed": T', text)
        text = re.sub(r"<elapsed>[^<]*</elapsed>", "<elapsed>T</elapsed>", text)
        text = re.sub(r"(?m)^Date: .*\r?\n?", "", text)
        # Keep-Alive's timeout is the server's own idle timeout: ClickHouse's config, or the proxy's limits.idle_timeout
        # for the connection a client has with the proxy (and `max=`, which only a server that counts requests per
        # connection sends). That the header is there, in its place, is what clients rely on.
        text = re.sub(r"timeout=[0-9]+(, ?max=[0-9]+)?", "timeout=N", text)
        text = re.sub(r'"elapsed_ns":"[0-9]+"', '"elapsed_ns":"T"', text)
        text = re.sub(r"X-ClickHouse-Exception-Tag: [A-Za-z0-9]+", "X-ClickHouse-Exception-Tag: TAG", text)
        text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "UUID", text)
        return text

    def select(self, label, statement):
        return self.sql(label, statement)


def decode_body(data, encoding):
    if not encoding:
        return data
    try:
        if encoding == "gzip":
            return b"[gzip]" + gzip.decompress(data)
        if encoding == "deflate":
            return b"[deflate]" + zlib.decompress(data)
    except Exception:  # noqa: BLE001
        return b"[undecodable " + encoding.encode() + b"]"
    return b"[" + encoding.encode() + b"]" + data


# ---------------------------------------------------------------- cases (our own reproductions)
# Each takes a Runner. Set-up statements that are not what the test is about go straight to the upstream
# (r.setup); everything the original test sends over HTTP goes to r (direct or proxy) and is recorded.

def c00039(r):  # inserts through HTTP: statement in the body; statement in the URL and data in the body
    r.setup.query("CREATE TABLE %s.t (x UInt8, s String) ENGINE = Memory" % r.db)
    r.sql("insert in body", "INSERT INTO %s.t VALUES (1, 'a'), (2, 'b')" % r.db)
    r.http("insert in url", params={"query": "INSERT INTO %s.t VALUES" % r.db}, body="(3, 'c')")
    r.http("tsv in url", params={"query": "INSERT INTO %s.t FORMAT TabSeparated" % r.db}, body="4\td\n5\te\n")
    r.select("read", "SELECT * FROM %s.t ORDER BY x" % r.db)


def c00070(r):  # insert fewer columns than the table has: defaults fill the rest
    r.setup.query("CREATE TABLE %s.t (a UInt8, b String DEFAULT 'dflt', c UInt8 DEFAULT a + 1) ENGINE = Memory" % r.db)
    r.sql("values (a)", "INSERT INTO %s.t (a) VALUES (1)" % r.db)
    r.http("tsv (a, b)", params={"query": "INSERT INTO %s.t (a, b) FORMAT TSV" % r.db}, body="2\ttwo\n")
    r.http("json (a)", params={"query": "INSERT INTO %s.t FORMAT JSONEachRow" % r.db}, body='{"a": 3}\n')
    r.select("read", "SELECT * FROM %s.t ORDER BY a" % r.db)


def c00177(r):  # the statement split anywhere between the query parameter and the body
    r.sql("create", "CREATE TABLE %s.t (x UInt8) ENGINE = Memory" % r.db)
    r.sql("whole in body", "INSERT INTO %s.t VALUES (1),(2)" % r.db)
    for prefix, rest in (("INSERT INTO %s.t VALUES" % r.db, "(3),(4)"), ("INSERT INTO %s.t" % r.db, "VALUES (5),(6)"),
                         ("INSERT INTO %s.t VALUES (7)" % r.db, ",(8)"), ("INSERT INTO %s.t VALUES (9),(10)" % r.db, " ")):
        r.http("split ...%r | %r" % (prefix[prefix.index(".t") + 2:], rest), params={"query": prefix}, body=rest)
    r.select("read", "SELECT x FROM %s.t ORDER BY x" % r.db)
    r.sql("drop", "DROP TABLE %s.t" % r.db)


def c00265(r):  # Content-Type of answers by format
    for fmt in ("TabSeparated", "JSON", "JSONEachRow", "CSV", "Values", "RowBinary", "Pretty", "XML"):
        r.sql(fmt, "SELECT 1 AS x FORMAT %s" % fmt, keep=("content-type",))


def c00302(r):  # compressed answers, and compressed request bodies
    statement = "SELECT number FROM system.numbers LIMIT 10"
    for setting, accept in (("1", None), ("0", "gzip"), ("1", "gzip"), ("1", "deflate"), ("1", "gzip, deflate"),
                            ("1", "zip, eflate")):
        headers = {"Accept-Encoding": accept} if accept else {}
        r.sql("enable=%s accept=%s" % (setting, accept), statement, params={"enable_http_compression": setting},
              headers=headers, keep=("content-encoding",))
    r.http("gzip select body", body=gzip.compress(b"SELECT 1\n"), headers={"Content-Encoding": "gzip"})
    r.http("gzip data body", params={"query": "SELECT"}, body=gzip.compress(b"'Hello, world'\n"),
           headers={"Content-Encoding": "gzip"})
    r.http("deflate body", body=zlib.compress(b"SELECT 2\n"), headers={"Content-Encoding": "deflate"})
    r.http("two gzip members", body=gzip.compress(b"SELECT 'Part1") + gzip.compress(b" Part2'\n"),
           headers={"Content-Encoding": "gzip"})
    r.setup.query("CREATE TABLE %s.t (x UInt32) ENGINE = Memory" % r.db)
    r.http("gzip insert", params={"query": "INSERT INTO %s.t FORMAT TSV" % r.db}, body=gzip.compress(b"1\n2\n"),
           headers={"Content-Encoding": "gzip"})
    r.http("deflate insert", params={"query": "INSERT INTO %s.t FORMAT TSV" % r.db}, body=zlib.compress(b"3\n"),
           headers={"Content-Encoding": "deflate"})
    # Read back after the answers settled: the gzip path is what this case checks, not read-your-writes.
    r.note("rows", wait_count(r.setup, "%s.t" % r.db, 3))


def c00302_bad(r):  # ours, next to 00302: a body that is not the gzip it says it is
    r.setup.query("CREATE TABLE %s.t (x UInt32) ENGINE = Memory" % r.db)
    status, body = r.http("bad gzip insert", params={"query": "INSERT INTO %s.t FORMAT TSV" % r.db},
                          body=b"not gzip at all", headers={"Content-Encoding": "gzip"})
    code = re.search(rb"Code: (\d+)", body)
    r.records[-1] = r.records[-1][:2] + ("Code %s" % (code.group(1).decode() if code else None), {})


def c00304(r):  # external data (multipart): passed through
    import requests
    answer = requests.post(r.url + "/", params={"query": "SELECT sum(x), count() FROM ext", "ext_structure": "x UInt32"},
                           files={"ext": ("ext", b"1\n2\n3\n")})
    r.record("external data", answer.status_code, answer.content)


def c00305(r):  # GET is read-only; readonly=1 refuses writes
    r.setup.query("CREATE TABLE %s.t (x UInt8) ENGINE = Memory" % r.db)
    r.http("GET insert", method="GET", params={"query": "INSERT INTO %s.t VALUES (1)" % r.db})
    r.sql("readonly insert", "INSERT INTO %s.t VALUES (2)" % r.db, params={"readonly": "1"})
    r.http("GET select", method="GET", params={"query": "SELECT count() FROM %s.t" % r.db})


def c00335(r):  # a UTF-8 BOM at the start of CSV data
    r.setup.query("CREATE TABLE %s.t (a UInt8, b UInt8, c UInt8) ENGINE = Memory" % r.db)
    r.http("plain", params={"query": "INSERT INTO %s.t FORMAT CSV" % r.db}, body=b"1,2,3\n")
    r.http("bom", params={"query": "INSERT INTO %s.t FORMAT CSV" % r.db}, body=b"\xef\xbb\xbf4,5,6\n")
    r.select("read", "SELECT * FROM %s.t ORDER BY a" % r.db)


def c00339(r):  # a number where an array of strings is due is refused; expressions in Values are evaluated
    r.setup.query("CREATE TABLE %s.t (a Array(String)) ENGINE = Memory" % r.db)
    status, body = r.sql("bad array", "INSERT INTO %s.t VALUES ([123])" % r.db)
    r.note("bad array refused", status != 200 and b"Exception" in body)
    r.records.pop(-2)  # the error text is the server's; what the test checks is that it is an exception
    r.sql("expressions", "INSERT INTO %s.t VALUES (['123', concat('Hello', ' world!'), toString(123)])" % r.db)
    # Ordered: a Memory table's two blocks may be read in either order.
    r.select("read", "SELECT * FROM %s.t ORDER BY length(a)" % r.db)


def c00366(r):  # one statement per request; a trailing semicolon is fine
    for statement in ("SELECT 1", "SELECT 1;", "SELECT 1; ", "SELECT 1 ; "):
        r.sql(repr(statement), statement)
    for statement in ("SELECT 1; S", "SELECT 1; SELECT 2", "SELECT 1; SELECT 2;", "SELECT 1; SELECT 2; SELECT"):
        status, body = r.http(repr(statement), body=statement)
        r.records[-1] = (r.records[-1][0], status, "Syntax error" if b"Syntax error" in body else
                         ("Multi-statements" if b"Multi-statements" in body else r.normalize(body.decode())), {})
    r.setup.query("CREATE TABLE %s.t (x UInt64) ENGINE = TinyLog" % r.db)
    r.sql("insert;", "INSERT INTO %s.t VALUES (1),(2),(3);" % r.db)
    r.select("read 1", "SELECT * FROM %s.t" % r.db)
    r.http("split insert;", params={"query": "INSERT"}, body="INTO %s.t VALUES (4),(5),(6);" % r.db)
    r.select("read 2", "SELECT * FROM %s.t" % r.db)
    r.http("url insert", params={"query": "INSERT INTO %s.t VALUES" % r.db}, body="(7),(8),(9)")
    r.select("read 3", "SELECT * FROM %s.t" % r.db)


def c00374(r):  # JSONEachRow with unknown (nested, noisy) fields skipped
    r.setup.query("CREATE TABLE %s.t (n UInt32, s String) ENGINE = Memory" % r.db)
    body = ('{"n": 1, "junk": {"a": [1, {"b": "}"}], "c": null}, "s": "one"}\n'
            '{"extra": "x\\"y", "s": "two", "n": 2}\n{"n": 3}\n')
    r.http("noisy", params={"query": "INSERT INTO %s.t FORMAT JSONEachRow" % r.db,
                            "input_format_skip_unknown_fields": "1"}, body=body)
    r.http("unknown field refused", params={"query": "INSERT INTO %s.t FORMAT JSONEachRow" % r.db},
           body='{"n": 4, "zzz": 1}\n')
    r.records[-1] = r.records[-1][:2] + ("(error text)" if r.records[-1][1] != 200 else r.records[-1][2], {})
    r.select("read", "SELECT * FROM %s.t ORDER BY n" % r.db)


def c00379(r):  # system.processes shows the client's port
    port = 20000 + (os.getpid() * 7 + len(r.records) + (1 if "_p" in r.tag else 0)) % 20000
    status, body = r.curl("port", ["--local-port", "%d-%d" % (port, port + 200),
                                   r.url + "/?query=" + urllib.parse.quote(
                                       "SELECT port FROM system.processes ORDER BY elapsed LIMIT 1")])
    seen = body.decode().strip()
    r.records[-1] = ("port", status, "the client's port" if seen.isdigit() and port <= int(seen) <= port + 200
                     else "another port", {})


def c00408(r):  # keep-alive headers on answers, errors and /ping; none on a 404 path
    keep = ("connection", "keep-alive")
    r.curl("select", [r.url + "/", "--data-binary", "SELECT 1"], keep=keep)
    r.curl("error", [r.url + "/", "--data-binary", " error here "], keep=keep)
    r.records[-1] = r.records[-1][:2] + ("(error text)",) + r.records[-1][3:]
    r.curl("ping", [r.url + "/ping"], keep=keep)
    r.curl("404", [r.url + "/404/not/found/"], keep=keep)
    r.records[-1] = r.records[-1][:2] + ("(not found text)",) + r.records[-1][3:]


def c00463(r):  # sessions: check, timeouts, settings and temporary tables kept, locking
    session = "%s_s%d" % (r.tag, os.getpid())  # a fresh session per run of the tool (sessions outlive a run)
    setting = "SELECT value FROM system.settings WHERE name = 'max_rows_to_read'"

    def q(label, params, statement):
        status, body = r.http(label, params=params, body=statement)
        text = body.decode(errors="replace")
        for marker in ("Session not found", "Invalid session timeout", "Session is locked", "doesn't exist",
                       "Exception", "Code:"):
            if marker in text:
                r.records[-1] = (label, status, "error: " + marker, {})
                break
    q("check missing", {"session_id": session + "_none", "session_check": "1"}, setting)
    q("check=0", {"session_id": session, "session_check": "0"}, setting)
    q("set", {"session_id": session}, "SET max_rows_to_read = 7777777")
    for timeout in ("string", "3601", "-1", "0", "3600", "60"):
        q("timeout " + timeout, {"session_id": session, "session_timeout": timeout}, setting)
    q("setting kept", {"session_id": session}, setting)
    q("temp table", {"session_id": session}, "CREATE TEMPORARY TABLE temp (x String)")
    q("temp insert", {"session_id": session}, "INSERT INTO temp VALUES ('Hello'), ('World')")
    q("temp read", {"session_id": session}, "SELECT * FROM temp ORDER BY x")
    q("other session", {"session_id": session + "_other"}, "SELECT * FROM temp ORDER BY x")
    # A request whose body never finishes holds the session; a second request meanwhile is refused.
    holder = socket.create_connection((r.host, r.port), timeout=10)
    holder.sendall(("POST /?session_id=%s HTTP/1.1\r\nHost: x\r\nContent-Length: 62\r\n\r\n" % session).encode())
    time.sleep(1)
    q("locked", {"session_id": session}, setting)
    holder.close()
    time.sleep(0.5)
    q("timeout=1 create", {"session_id": session + "_t", "session_timeout": "1"}, "CREATE TEMPORARY TABLE temp (x UInt8)")
    # ClickHouse closes an expired session on its next cleanup pass: a loaded machine may be late by a second or more.
    time.sleep(4)
    q("expired", {"session_id": session + "_t", "session_check": "1"}, setting)


def c00485(r):  # FORMAT followed by varied whitespace; data right after it
    r.setup.query("CREATE TABLE %s.t (s String, x FixedString(3)) ENGINE = Memory" % r.db)
    r.http("url", params={"query": "INSERT INTO %s.t FORMAT TabSeparated" % r.db}, body=b"\tABC\n")
    for body in (b"FORMAT TabSeparated\n\tDEF\n", b"FORMAT TabSeparated hello\tGHI\n", b"FORMAT TabSeparated\r\n\tJKL\n",
                 b"FORMAT TabSeparated   \t\r\n\tMNO\n", b"FORMAT TabSeparated\t\t\thello\tPQR\n"):
        r.http(repr(body[19:26]), body=("INSERT INTO %s.t " % r.db).encode() + body)
    r.select("read", "SELECT * FROM %s.t ORDER BY s, x FORMAT JSONEachRow" % r.db)


def c00497(r):  # whitespace and comments around and inside the INSERT
    r.setup.query("CREATE TABLE %s.t (a UInt8, b String) ENGINE = Memory" % r.db)
    for body in ("  \n\tINSERT INTO %s.t VALUES (1, 'x')", "INSERT\tINTO\n%s.t\nVALUES\n(2,\n'y')\n",
                 "/* c */ INSERT INTO %s.t -- d\n VALUES (3, 'z')", "insert into %s.t format TSV\n4\tw\n"):
        r.sql(repr(body[:14]), body % r.db)
    r.select("read", "SELECT * FROM %s.t ORDER BY a" % r.db)


def c00501(r):  # HEAD answers headers without a body; POST without a length is refused (411)
    keep = ("content-type", "transfer-encoding", "connection", "keep-alive", "x-clickhouse-format")
    r.curl("HEAD small", ["--head", r.url + "/?query=" + urllib.parse.quote("SELECT 1")], keep=keep)
    r.curl("HEAD large", ["--head", r.url + "/?query=" + urllib.parse.quote(
        "SELECT * FROM system.numbers LIMIT 1000000")], keep=keep)
    r.curl("POST no length", ["-X", "POST", r.url + "/?query=SELECT+1"])
    r.records[-1] = r.records[-1][:2] + (("(error text)" if r.records[-1][1] != 200 else r.records[-1][2]),
                                         r.records[-1][3])
    r.curl("POST empty", ["-X", "POST", r.url + "/?query=SELECT+1", "--data", ""])


def c00520(r):  # Nullable columns over HTTP: \N in TSV, NULL in Values
    r.setup.query("CREATE TABLE %s.t (a UInt8, b Nullable(String)) ENGINE = Memory" % r.db)
    r.http("tsv", params={"query": "INSERT INTO %s.t FORMAT TSV" % r.db}, body=b"1\t\\N\n2\tx\n")
    r.sql("values", "INSERT INTO %s.t VALUES (3, NULL), (4, 'y')" % r.db)
    r.select("read", "SELECT a, b, isNull(b) FROM %s.t ORDER BY a" % r.db)


def c00612(r):  # max_query_size bounds the statement (not the data after it)
    r.setup.query("CREATE TABLE %s.t (key UInt64) ENGINE = Memory" % r.db)
    r.sql("small insert", "INSERT INTO %s.t VALUES (1)" % r.db, params={"max_query_size": "40"})
    r.sql("data longer than the limit", "INSERT INTO %s.t VALUES " % r.db + ",".join("(%d)" % i for i in range(2, 40)),
          params={"max_query_size": "40"})
    status, body = r.sql("long select", "SELECT key FROM %s.t WHERE key IN (%s)" % (r.db, ",".join(map(str, range(50)))),
                         params={"max_query_size": "40"})
    r.records[-1] = r.records[-1][:2] + ("(error)" if status != 200 else "ok", {})
    r.note("rows", wait_count(r.setup, "%s.t" % r.db, 39))


def c00728(r):  # many JSONEachRow rows in one HTTP/1.0 request (no chunking)
    r.setup.query("CREATE TABLE %s.t (aaa String, bbb String) ENGINE = Memory" % r.db)
    r.curl("insert", ["-0", r.url + "/?query=" + urllib.parse.quote("INSERT INTO %s.t FORMAT JSONEachRow" % r.db),
                      "--data-binary", "@-"], stdin=b'{"aaa":"aaa","bbb":"bbb"}\n' * 100000)
    r.select("count", "SELECT count() FROM %s.t" % r.db)


def c00322(r):  # decompress=1: ClickHouse's compressed blocks in the body (passed through)
    import matrix
    r.setup.query("CREATE TABLE %s.t (x UInt8, s String) ENGINE = Memory" % r.db)
    r.http("lz4 block", params={"query": "INSERT INTO %s.t FORMAT TSV" % r.db, "decompress": "1"},
           body=matrix.compressed_block(b"1\ta\n2\tb\n"))
    r.select("read", "SELECT * FROM %s.t ORDER BY x" % r.db)


# Modern-only: what 18.16 lacks.
def m_summary(r):  # X-ClickHouse-Summary written_rows on INSERT answers
    r.setup.query("CREATE TABLE %s.t (x UInt8) ENGINE = Memory" % r.db)
    for n in (1, 3):
        status, _ = r.sql("insert %d" % n, "INSERT INTO %s.t VALUES %s" % (r.db, ",".join("(%d)" % i for i in range(n))),
                          keep=("x-clickhouse-summary",))
        label, status, body, headers = r.records[-1]
        summary = json.loads(headers.get("x-clickhouse-summary") or "{}")
        r.records[-1] = (label, status, body, {"written_rows": summary.get("written_rows")})
    r.select("read", "SELECT count() FROM %s.t" % r.db)


def m_bodies(r):  # request bodies in the codecs a modern server decodes
    import lz4.frame
    import zstandard
    r.setup.query("CREATE TABLE %s.t (x UInt8) ENGINE = Memory" % r.db)
    for name, coded in (("zstd", zstandard.ZstdCompressor().compress(b"1\n")), ("lz4", lz4.frame.compress(b"2\n"))):
        r.http(name, params={"query": "INSERT INTO %s.t FORMAT TSV" % r.db}, body=coded,
               headers={"Content-Encoding": name})
    r.note("rows", wait_count(r.setup, "%s.t" % r.db, 2))


def m_x_headers(r):  # X-ClickHouse-Database and X-ClickHouse-Format request headers; param_ parameters
    r.setup.query("CREATE TABLE %s.t (x UInt8) ENGINE = Memory" % r.db)
    r.sql("insert with database header", "INSERT INTO t VALUES (5)", headers={"X-ClickHouse-Database": r.db})
    r.sql("select with format header", "SELECT x FROM t", headers={"X-ClickHouse-Database": r.db,
                                                                   "X-ClickHouse-Format": "JSONEachRow"})
    r.http("param", method="GET", params={"query": "SELECT {v:UInt8} + 1", "param_v": "41"})


CASES = [  # (name, function, upstreams)
    ("00039", c00039, ("18.16", "modern")), ("00070", c00070, ("18.16", "modern")),
    ("00177", c00177, ("18.16", "modern")), ("00265", c00265, ("18.16", "modern")),
    ("00302", c00302, ("18.16", "modern")),
    ("00302-bad", c00302_bad, ("18.16", "modern")), ("00304", c00304, ("18.16",)),
    ("00305", c00305, ("18.16", "modern")), ("00322", c00322, ("18.16", "modern")),
    ("00335", c00335, ("18.16", "modern")), ("00339", c00339, ("18.16", "modern")),
    ("00366", c00366, ("18.16", "modern")), ("00374", c00374, ("18.16", "modern")),
    ("00379", c00379, ("18.16",)), ("00408", c00408, ("18.16", "modern")),
    ("00463", c00463, ("18.16", "modern")), ("00485", c00485, ("18.16", "modern")),
    ("00497", c00497, ("18.16", "modern")), ("00501", c00501, ("18.16", "modern")),
    ("00520", c00520, ("18.16", "modern")), ("00612", c00612, ("18.16", "modern")),
    ("00728", c00728, ("18.16", "modern")),
    ("m-summary", m_summary, ("modern",)), ("m-bodies", m_bodies, ("modern",)), ("m-x-headers", m_x_headers, ("modern",)),
]


def wait_count(upstream, table, want, timeout=5.0):
    """The row count of `table` once it reaches `want` (or what it is after `timeout`): for cases whose subject is
    not read-your-writes."""
    deadline = time.monotonic() + timeout
    while True:
        count = int(upstream.query("SELECT count() FROM %s" % table).strip())
        if count >= want or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


def run_case(name, function, url, upstream_url, side):
    tag = "hc_%s_%s" % (side, name.replace("-", "_"))  # side: d (direct), pe / pf (proxy, enqueued / flushed)
    runner = Runner(url, tag, upstream_url)
    runner.setup.query("DROP DATABASE IF EXISTS %s" % tag)
    runner.setup.query("CREATE DATABASE %s" % tag)
    try:
        function(runner)
    except Exception as error:  # noqa: BLE001
        runner.note("exception", "%s: %s" % (type(error).__name__, error))
    return runner.records


def expected_reason(name, ack, upstream):
    for key in (name, "%s@%s" % (name, ack), "%s@%s@%s" % (name, ack, upstream), "%s@*@%s" % (name, upstream)):
        if key in EXPECTED_FAILURES:
            return key, EXPECTED_FAILURES[key]
    return None, None


def first_difference(direct, proxied):
    for index in range(max(len(direct), len(proxied))):
        a = direct[index] if index < len(direct) else None
        b = proxied[index] if index < len(proxied) else None
        if a != b:
            def short(rec):
                if rec is None:
                    return "(nothing)"
                label, status, body, headers = rec
                text = "%s %r" % (status, body[:120])
                if headers:
                    text += " %s" % headers
                return text
            return "%s: direct %s / proxy %s" % ((a or b)[0], short(a), short(b))
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--clickhouse")
    parser.add_argument("--modern")
    parser.add_argument("--work", required=True)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    upstreams = {}
    if args.clickhouse:
        upstreams["18.16"] = args.clickhouse
    if args.modern:
        upstreams["modern"] = args.modern
    modes = {"enqueued": "", "flushed": "defaults: { ack: flushed, max_delay: 200ms }\n"}
    rows, unexpected, now_pass, started = [], [], [], time.monotonic()
    proxies = []
    try:
        for upstream_name, upstream_url in upstreams.items():
            mode_proxies = {}
            for mode, body in modes.items():
                proxy = Proxy(args.binary, args.work, "cases-%s-%s" % (upstream_name.replace(".", ""), mode),
                              upstream_url, body).start()
                proxies.append(proxy)
                mode_proxies[mode] = proxy
            for name, function, applies in CASES:
                if upstream_name not in applies or (args.only and name not in args.only):
                    continue
                direct = run_case(name, function, upstream_url, upstream_url, "d")
                for mode, proxy in mode_proxies.items():
                    proxied = run_case(name, function, proxy.url, upstream_url, "p" + mode[0])
                    difference = first_difference(direct, proxied)
                    key, reason = expected_reason(name, mode, upstream_name)
                    if difference is None and key is None:
                        verdict = "same"
                    elif difference is None:
                        verdict = "same (expected failure %s now passes)" % key
                        now_pass.append("%s@%s@%s (listed as %s: %s)" % (name, mode, upstream_name, key, reason))
                    elif key is not None:
                        verdict = "DIFFERS (expected: %s)" % reason
                    else:
                        verdict = "DIFFERS (unexpected)"
                        unexpected.append("%s@%s@%s: %s" % (name, mode, upstream_name, difference))
                    rows.append((name, upstream_name, mode, verdict, difference or ""))
                    log(TOOL, "%s %s %s: %s %s" % (name, upstream_name, mode, verdict, (difference or "")[:300]))
                    if args.verbose:
                        for a in direct:
                            log(TOOL, "   direct", a)
                        for b in proxied:
                            log(TOOL, "   proxy ", b)
    finally:
        for proxy in proxies:
            proxy.stop()
    print()
    print("| case | upstream | ack | direct vs proxy | first difference |")
    print("|---|---|---|---|---|")
    for name, upstream_name, mode, verdict, difference in rows:
        print("| %s | %s | %s | %s | %s |" % (name, upstream_name, mode, verdict,
                                             difference[:220].replace("|", "/").replace("\n", "\\n")))
    for upstream_name in upstreams:
        for mode in modes:
            failing = [row[0] for row in rows if row[1] == upstream_name and row[2] == mode and row[3].startswith("DIFF")]
            print("http-cases: %s, %s: %d of %d cases differ through the proxy: %s"
                  % (upstream_name, mode, len(failing), sum(1 for row in rows if row[1] == upstream_name and row[2] == mode),
                     " ".join(failing) or "none"))
    print("http-cases: %.0f s" % (time.monotonic() - started))
    for item in now_pass:
        print("http-cases: expected failure now passes, remove it from EXPECTED_FAILURES: %s" % item)
    if unexpected:
        print("http-cases: %d unexpected differences:" % len(unexpected))
        for item in unexpected:
            print("  FAIL " + item)
        return 1
    print("http-cases: no unexpected difference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
