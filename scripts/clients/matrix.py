"""The real-client matrix (docs/testing.md, "Client matrix"): each client sends single-row INSERTs with unique ids
through the proxy and straight to the upstream, reads them back, and the matrix compares the rows (exact content,
by id), counts the upstream INSERTs per 1,000 (active parts of a MergeTree table under SYSTEM STOP MERGES: one part
per INSERT the server took, on 18.16 and on the modern front alike) and checks the client's view of written_rows
(X-ClickHouse-Summary) where the client shows it.

Expectations are data (EXPECTED below): each row has today's outcome and, where a feature being built in parallel
changes it, the target outcome and the features it needs. The integrator adds a feature to LANDED (or sets
CLIENT_MATRIX_FEATURES=lz4-body,native,...) once it is merged; its rows are then judged against their target.
Any row whose measured outcome differs from its expectation fails the run (exit 1)."""

import argparse
import asyncio
import gzip
import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HTTP, Proxy, log  # noqa: E402

TOOL = "client-matrix"

# Features being built in parallel. Add a name here (or to CLIENT_MATRIX_FEATURES) when it lands; the rows that need
# it are then expected to reach their target.
#   lz4-body     Content-Encoding: lz4 request bodies decoded (and batched)
#   zstd-body    Content-Encoding: zstd
#   native       Native batched (validated with the table's column types), written_rows answered
#   rowbinary    RowBinary batched, written_rows answered
#   decompress   decompress=1 (ClickHouse compressed blocks) decoded and batched
LANDED = {"lz4-body", "zstd-body", "native", "rowbinary", "decompress"}

PASSED = "passed through"
BATCHED = "batched"

# name: (client, variant, upstreams, today, target, needs)
#   today/target: (path, max upstream inserts per 1,000 or None, written_rows expected: "yes" | "n.a.")
#   The bound is 5 for the must-have rows (1,000 inserts). The lighter rows send 100 inserts over a few seconds
#   against a 5 s delay, so they get a loose 200 per 1,000: "batched, not one insert per row", robust on a loaded
#   machine.
#   rows identical is expected "yes" everywhere, always.
W = "yes"
NA = "n.a."
EXPECTED = {
    "clickhouse-connect/default": ("clickhouse-connect", "Native, lz4 (default)", ["modern"],
                                   (PASSED, None, W), (BATCHED, 5, W), {"lz4-body", "native"}),
    "clickhouse-connect/zstd": ("clickhouse-connect", "Native, zstd", ["modern"],
                                (PASSED, None, W), (BATCHED, 5, W), {"zstd-body", "native"}),
    "clickhouse-connect/gzip": ("clickhouse-connect", "Native, gzip", ["modern"],
                                (PASSED, None, W), (BATCHED, 200, W), {"native"}),
    "clickhouse-connect/off": ("clickhouse-connect", "Native, compress=False", ["modern"],
                               (PASSED, None, W), (BATCHED, 200, W), {"native"}),
    "aiochclient/values": ("aiochclient", "VALUES", ["18.16", "modern"], (BATCHED, 200, NA), None, set()),
    "requests/url+values": ("requests", "query in URL, VALUES body", ["18.16", "modern"], (BATCHED, 200, W), None, set()),
    "requests/jsoneachrow": ("requests", "JSONEachRow body", ["18.16", "modern"], (BATCHED, 200, W), None, set()),
    "requests/gzip": ("requests", "gzip body (TSV)", ["18.16", "modern"], (BATCHED, 200, W), None, set()),
    "curl/00177-split": ("curl", "split URL|body (00177)", ["18.16", "modern"], (BATCHED, 200, W), None, set()),
    "curl/00485-format-ws": ("curl", "FORMAT + odd whitespace (00485)", ["18.16", "modern"], (BATCHED, 200, W), None, set()),
    "curl/00302-gzip": ("curl", "gzip body (00302)", ["18.16", "modern"], (BATCHED, 200, W), None, set()),
    "curl/00302-deflate": ("curl", "deflate body (00302)", ["18.16", "modern"], (BATCHED, 200, W), None, set()),
    "sqlalchemy/http": ("clickhouse-sqlalchemy", "http driver", ["18.16", "modern"], (BATCHED, 200, NA), None, set()),
    "rowbinary/plain": ("requests", "RowBinary", ["18.16", "modern"], (PASSED, None, W), (BATCHED, 200, W), {"rowbinary"}),
    "rowbinary/decompress-lz4": ("requests", "RowBinary, decompress=1 LZ4", ["18.16", "modern"],
                                 (PASSED, None, W), (BATCHED, 200, W), {"rowbinary", "decompress"}),
}
# Which rows also run with `ack: flushed` (all of them run in the default mode, enqueued).
FLUSHED_ROWS = {"clickhouse-connect/default", "clickhouse-connect/zstd", "aiochclient/values",
                "requests/url+values", "curl/00177-split"}
# Rows that get the full 1,000 through the proxy (the must-have check); the others send LIGHT_N and are scaled.
FULL_ROWS = {"clickhouse-connect/default", "clickhouse-connect/zstd"}


def row_value(row_id):
    """The content of a row, derived from its id: a string with a quote, a backslash, a tab, a double quote and
    non-ASCII, and a float that is exact in binary."""
    return row_id, "r%d it's \\ \"q\"\t\u00e9\u2713" % row_id, row_id / 4.0


# ---- clients: each takes (url, database, table, ids) and returns the written_rows it saw per insert (None: the
# client does not show it or the answer had no summary), raising on any failed insert.

def summary_written(headers):
    text = headers.get("x-clickhouse-summary") or headers.get("X-ClickHouse-Summary")
    if not text:
        return None
    try:
        return int(json.loads(text).get("written_rows"))
    except (ValueError, TypeError):
        return -1


def ch_connect(compress):
    def run(url, database, table, ids):
        import clickhouse_connect
        parsed = urllib.parse.urlparse(url)
        options = {} if compress == "default" else {"compress": compress}
        client = clickhouse_connect.get_client(host=parsed.hostname, port=parsed.port, username="default",
                                               database=database, **options)
        seen = []
        for row_id in ids:
            summary = client.insert(table, [list(row_value(row_id))], column_names=["id", "s", "v"])
            seen.append(summary.written_rows if summary.summary else None)
        client.close()
        return seen
    return run


def aioch(url, database, table, ids):
    import aiohttp
    from aiochclient import ChClient

    async def main():
        async with aiohttp.ClientSession() as session:
            client = ChClient(session, url=url, database=database)
            for row_id in ids:
                await client.execute("INSERT INTO %s (id, s, v) VALUES" % table, row_value(row_id))
    asyncio.run(main())
    return [None] * len(ids)


def values_literal(row_id):
    i, s, v = row_value(row_id)
    return "(%d,'%s',%r)" % (i, s.replace("\\", "\\\\").replace("'", "\\'").replace("\t", "\\t"), v)


def tsv_line(row_id):
    i, s, v = row_value(row_id)
    return "%d\t%s\t%r\n" % (i, s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n"), v)


def requests_shape(shape):
    def run(url, database, table, ids):
        import requests
        session = requests.Session()
        seen = []
        for row_id in ids:
            if shape == "url+values":
                answer = session.post(url, params={"database": database, "query": "INSERT INTO %s VALUES" % table},
                                      data=values_literal(row_id).encode())
            elif shape == "jsoneachrow":
                i, s, v = row_value(row_id)
                body = "INSERT INTO %s.%s FORMAT JSONEachRow\n%s\n" % (database, table,
                                                                       json.dumps({"id": i, "s": s, "v": v}))
                answer = session.post(url, data=body.encode())
            elif shape == "gzip":
                answer = session.post(url, params={"query": "INSERT INTO %s.%s FORMAT TabSeparated" % (database, table)},
                                      data=gzip.compress(tsv_line(row_id).encode()),
                                      headers={"Content-Encoding": "gzip"})
            elif shape in ("rowbinary", "rowbinary-lz4"):
                i, s, v = row_value(row_id)
                raw = struct.pack("<Q", i) + varint(len(s.encode())) + s.encode() + struct.pack("<d", v)
                params = {"query": "INSERT INTO %s.%s (id, s, v) FORMAT RowBinary" % (database, table)}
                if shape == "rowbinary-lz4":
                    raw = compressed_block(raw)
                    params["decompress"] = "1"
                answer = session.post(url, params=params, data=raw)
            else:
                raise ValueError(shape)
            if answer.status_code != 200:
                raise RuntimeError("%d: %s" % (answer.status_code, answer.text[:300]))
            seen.append(summary_written(answer.headers))
        session.close()
        return seen
    return run


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def compressed_block(raw):
    """ClickHouse's compressed block (what decompress=1 reads): CityHash128 (v1.0.2) of the rest, method 0x82 (LZ4),
    compressed size with the 9-byte header, uncompressed size, the LZ4 block."""
    import lz4.block
    from clickhouse_cityhash.cityhash import CityHash128
    data = lz4.block.compress(raw, store_size=False)
    header = struct.pack("<BII", 0x82, len(data) + 9, len(raw))
    checksum = CityHash128(header + data)
    # clickhouse-cityhash gives the 128 bits with the halves the other way round from the wire order.
    return struct.pack("<QQ", checksum >> 64, checksum & 0xFFFFFFFFFFFFFFFF) + header + data


def curl_shape(shape):
    def run(url, database, table, ids):
        seen = []
        for row_id in ids:
            headers_file = io.BytesIO()
            if shape == "00177-split":
                args = [url + "/?" + urllib.parse.urlencode({"query": "INSERT INTO %s.%s" % (database, table)}),
                        "--data-binary", "VALUES " + values_literal(row_id)]
                stdin = None
            elif shape == "00485-format-ws":
                args = [url + "/", "--data-binary", "@-"]
                stdin = ("INSERT INTO %s.%s FORMAT TabSeparated   \t\r\n" % (database, table) + tsv_line(row_id)).encode()
            elif shape in ("00302-gzip", "00302-deflate"):
                body = tsv_line(row_id).encode()
                coded = gzip.compress(body) if shape.endswith("gzip") else zlib.compress(body)
                args = [url + "/?" + urllib.parse.urlencode({"query": "INSERT INTO %s.%s FORMAT TSV" % (database, table)}),
                        "--data-binary", "@-", "-H", "Content-Encoding: " + shape.split("-")[1]]
                stdin = coded
            else:
                raise ValueError(shape)
            done = subprocess.run(["curl", "-sS", "-D", "/dev/stderr", "-o", "/dev/stdout", "-w", "%{http_code}"] + args,
                                  input=stdin, capture_output=True, timeout=60)
            status = done.stdout[-3:].decode()
            if status != "200":
                raise RuntimeError("curl %s: %s %s" % (shape, status, done.stdout[:-3][:300]))
            headers = {}
            for line in done.stderr.decode(errors="replace").splitlines():
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            seen.append(summary_written(headers))
            del headers_file
        return seen
    return run


def sqlalchemy_http(url, database, table, ids):
    from sqlalchemy import Column, MetaData, create_engine
    from clickhouse_sqlalchemy import Table, engines, types
    parsed = urllib.parse.urlparse(url)
    engine = create_engine("clickhouse+http://default:@%s:%d/%s" % (parsed.hostname, parsed.port, database))
    metadata = MetaData()
    target = Table(table, metadata, Column("id", types.UInt64, primary_key=True), Column("s", types.String),
                   Column("v", types.Float64), engines.Memory())
    with engine.connect() as connection:
        for row_id in ids:
            i, s, v = row_value(row_id)
            connection.execute(target.insert(), [{"id": i, "s": s, "v": v}])
    engine.dispose()
    return [None] * len(ids)


CLIENTS = {
    "clickhouse-connect/default": ch_connect("default"),
    "clickhouse-connect/zstd": ch_connect("zstd"),
    "clickhouse-connect/gzip": ch_connect("gzip"),
    "clickhouse-connect/off": ch_connect(False),
    "aiochclient/values": aioch,
    "requests/url+values": requests_shape("url+values"),
    "requests/jsoneachrow": requests_shape("jsoneachrow"),
    "requests/gzip": requests_shape("gzip"),
    "curl/00177-split": curl_shape("00177-split"),
    "curl/00485-format-ws": curl_shape("00485-format-ws"),
    "curl/00302-gzip": curl_shape("00302-gzip"),
    "curl/00302-deflate": curl_shape("00302-deflate"),
    "sqlalchemy/http": sqlalchemy_http,
    "rowbinary/plain": requests_shape("rowbinary"),
    "rowbinary/decompress-lz4": requests_shape("rowbinary-lz4"),
}


def installed(name):
    """None when the row's client imports, else why not."""
    module = {"clickhouse-connect": "clickhouse_connect", "aiochclient": "aiochclient", "requests": "requests",
              "clickhouse-sqlalchemy": "clickhouse_sqlalchemy", "curl": None}[EXPECTED[name][0]]
    try:
        if module:
            __import__(module)
        if name.startswith("rowbinary/decompress"):
            __import__("lz4.block")
            __import__("clickhouse_cityhash.cityhash")
        if EXPECTED[name][0] == "curl":
            subprocess.run(["curl", "--version"], capture_output=True, check=True)
    except Exception as error:  # noqa: BLE001
        return "not installed (%s)" % error
    return None


def send(function, url, database, table, ids, threads):
    """Runs `function` over `ids` split across `threads` threads; (written_rows seen, errors)."""
    chunks = [ids[k::threads] for k in range(threads)]
    seen, errors = [], []
    lock = threading.Lock()

    def worker(chunk):
        try:
            result = function(url, database, table, chunk)
            with lock:
                seen.extend(result)
        except Exception as error:  # noqa: BLE001
            with lock:
                errors.append("%s: %s" % (type(error).__name__, str(error)[:300]))
    pool = [threading.Thread(target=worker, args=(chunk,)) for chunk in chunks if chunk]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return seen, errors


def compare_rows(upstream, database, table, ids):
    """'yes' when every id is there once with its exact content, else a short account."""
    rows = upstream.json_rows("SELECT id, s, v FROM %s.%s" % (database, table))
    counts, damaged = {}, 0
    for row in rows:
        row_id = int(row["id"])
        counts[row_id] = counts.get(row_id, 0) + 1
        if (row_id, row["s"], float(row["v"])) != row_value(row_id):
            damaged += 1
    wanted = set(ids)
    missing = len(wanted - set(counts))
    duplicated = sum(1 for c in counts.values() if c > 1)
    unexpected = len(set(counts) - wanted)
    if not (missing or duplicated or unexpected or damaged):
        return "yes"
    return "no (%d missing, %d duplicated, %d damaged, %d unexpected)" % (missing, duplicated, damaged, unexpected)


def written_verdict(seen, upstream_name, shows):
    if not shows:
        return NA
    if all(v is None for v in seen):
        return NA if upstream_name == "18.16" else "no (no summary)"
    if all(v == 1 for v in seen):
        return "yes"
    return "no (%s)" % sorted(set(seen), key=str)[:5]


SHOWS_SUMMARY = {"clickhouse-connect", "requests", "curl"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--clickhouse", help="URL of ClickHouse 18.16")
    parser.add_argument("--modern", help="URL of the modern front")
    parser.add_argument("--work", required=True)
    parser.add_argument("--full", type=int, default=int(os.environ.get("CLIENT_MATRIX_FULL", 1000)))
    parser.add_argument("--light", type=int, default=int(os.environ.get("CLIENT_MATRIX_LIGHT", 100)))
    parser.add_argument("--direct", type=int, default=int(os.environ.get("CLIENT_MATRIX_DIRECT", 50)))
    parser.add_argument("--only", nargs="*", help="row names (substring match)")
    args = parser.parse_args()
    landed = set(LANDED) | {f for f in os.environ.get("CLIENT_MATRIX_FEATURES", "").split(",") if f}

    upstreams = {}
    if args.clickhouse:
        upstreams["18.16"] = args.clickhouse
    if args.modern:
        upstreams["modern"] = args.modern
    # hybrid, 100000 rows, 5 s (a delay a user who wants few parts sets; reads flush at once: read_your_writes), ack enqueued; tables ending in _fl get `ack: flushed`
    # with a shorter delay, so that the flushed runs (whose every answer waits for a flush) stay short.
    yaml_body = ("defaults: { strategy: hybrid, max_rows: 100000, max_delay: 5s, ack: enqueued }\n"
                 "tables:\n  \"*_fl\": { ack: flushed, max_delay: 200ms }\n")
    proxies = {}
    results, failures, started = [], [], time.monotonic()
    try:
        for name, url in upstreams.items():
            proxies[name] = Proxy(args.binary, args.work, "matrix-" + name.replace(".", ""), url, yaml_body).start()
            log(TOOL, "proxy for %s (%s, %s) at %s" % (name, url, HTTP(url).version(), proxies[name].url))
        base_id = int(time.time()) * 1000000
        for number, (row, spec) in enumerate(EXPECTED.items()):
            if args.only and not any(o in row for o in args.only):
                continue
            client, variant, row_upstreams, today, target, needs = spec
            expected = target if target and needs <= landed else today
            missing_client = installed(row)
            for upstream_name in row_upstreams:
                if upstream_name not in upstreams:
                    continue
                upstream = HTTP(upstreams[upstream_name])
                for ack in (["enqueued", "flushed"] if row in FLUSHED_ROWS else ["enqueued"]):
                    record = {"row": row, "client": client, "variant": variant, "upstream": upstream_name, "ack": ack}
                    results.append(record)
                    if missing_client:
                        record.update(path="-", per_1000="-", identical=missing_client, written="-",
                                      direct="-", verdict="FAIL")
                        failures.append("%s %s %s: %s" % (row, upstream_name, ack, missing_client))
                        continue
                    try:
                        record.update(run_row(row, client, upstream_name, upstream, proxies[upstream_name], ack, args,
                                              base_id + number * 20000 + (10000 if ack == "flushed" else 0)))
                    except Exception as error:  # noqa: BLE001
                        traceback.print_exc()
                        record.update(path="error", per_1000="-", identical="no (%s)" % error, written="-", direct="-")
                    problems = judge(record, expected, ack)
                    record["expected"] = "%s%s" % (expected[0], "" if expected[1] is None else " <=%d" % expected[1])
                    record["pending"] = ",".join(sorted(needs - landed)) if target else ""
                    record["verdict"] = "ok" if not problems else "FAIL"
                    if problems:
                        failures.append("%s %s %s: %s" % (row, upstream_name, ack, "; ".join(problems)))
                    log(TOOL, "%-28s %-6s %-8s %s" % (row, upstream_name, ack, record))
    finally:
        for proxy in proxies.values():
            proxy.stop()
    print_table(results)
    print("\nclient-matrix: %d rows in %.0f s; features counted as landed: %s"
          % (len(results), time.monotonic() - started, ", ".join(sorted(landed)) or "none"))
    print("client-matrix: loads: %d single-row inserts through the proxy for %s (enqueued), %d for the other rows, "
          "%d straight to the upstream per row; inserts per 1,000 scaled from the load sent"
          % (args.full, ", ".join(sorted(FULL_ROWS)), args.light, args.direct))
    if failures:
        print("\nclient-matrix: %d rows differ from their expectation:" % len(failures))
        for failure in failures:
            print("  FAIL " + failure)
        return 1
    print("client-matrix: every row as expected")
    return 0


def run_row(row, client, upstream_name, upstream, proxy, ack, args, first_id):
    function = CLIENTS[row]
    database = "cm_" + row.replace("/", "_").replace("-", "_").replace("+", "_")
    suffix = "_fl" if ack == "flushed" else ""
    upstream.query("CREATE DATABASE IF NOT EXISTS %s" % database)
    out = {}
    for where in ("proxy", "direct"):
        table = "t_%s%s" % (where, suffix)
        upstream.query("DROP TABLE IF EXISTS %s.%s" % (database, table))
        upstream.query("CREATE TABLE %s.%s (id UInt64, s String, v Float64) ENGINE = MergeTree ORDER BY id"
                       % (database, table))
        upstream.query("SYSTEM STOP MERGES %s.%s" % (database, table))
        if where == "proxy":
            n = args.full if (row in FULL_ROWS and ack == "enqueued") else args.light
            ids = list(range(first_id, first_id + n))
            threads = 16 if ack == "flushed" else 8
            url = proxy.url
        else:
            if ack == "flushed":
                continue  # the direct run does not depend on the proxy's ack mode
            n = args.direct
            ids = list(range(first_id + 5000, first_id + 5000 + n))
            threads = 4
            url = upstream.url
        began = time.monotonic()
        seen, errors = send(function, url, database, table, ids, threads)
        if where == "proxy" and not proxy.drain():
            errors.append("the proxy did not drain in 30 s")
        parts = upstream.active_parts(database, table)
        identical = compare_rows(HTTP(url), database, table, ids)  # read back through the proxy (a passthrough SELECT)
        if errors:
            identical = "no (%d errors; first: %s)" % (len(errors), errors[0])
        written = written_verdict(seen, upstream_name, client in SHOWS_SUMMARY)
        if where == "proxy":
            per_1000 = parts * 1000.0 / n
            out.update(path=BATCHED if per_1000 < 500 else PASSED, per_1000="%.0f" % per_1000, identical=identical,
                       written=written, n=n, seconds="%.1f" % (time.monotonic() - began))
        else:
            out.update(direct="%s; written_rows %s" % ("identical" if identical == "yes" else identical, written))
    if ack == "flushed":
        out["direct"] = "(see enqueued)"
    return out


def judge(record, expected, ack):
    path, max_per_1000, written = expected
    problems = []
    if record["identical"] != "yes":
        problems.append("rows: %s" % record["identical"])
    if record["path"] != path:
        problems.append("path %s, expected %s" % (record["path"], path))
    # The bound on inserts holds in the default mode; flushed answers wait for a flush, so batches are smaller.
    if max_per_1000 is not None and ack == "enqueued" and record["path"] == BATCHED and \
            float(record["per_1000"]) > max_per_1000:
        problems.append("%s upstream inserts per 1,000, expected at most %d" % (record["per_1000"], max_per_1000))
    if written == "yes" and record["upstream"] == "18.16" and record["path"] == PASSED:
        written = NA  # 18.16 sends no X-ClickHouse-Summary, and a passed-through answer is 18.16's own
    if not record["written"].startswith(written):
        problems.append("written_rows %s, expected %s" % (record["written"], written))
    if not str(record.get("direct", "")).startswith(("identical", "(see")):
        problems.append("direct run: %s" % record.get("direct"))
    return problems


def print_table(results):
    columns = [("client", "client"), ("variant", "compression/format"), ("upstream", "upstream"), ("ack", "ack"),
               ("n", "sent"), ("path", "through the proxy"), ("per_1000", "upstream inserts/1000"),
               ("identical", "rows identical"), ("written", "written_rows"), ("direct", "direct run"),
               ("expected", "expected"), ("pending", "waits for"), ("verdict", "verdict")]
    print()
    print("| " + " | ".join(title for _, title in columns) + " |")
    print("|" + "---|" * len(columns))
    for record in results:
        print("| " + " | ".join(str(record.get(key, "")).replace("|", "/") for key, _ in columns) + " |")


if __name__ == "__main__":
    sys.exit(main())
