"""The load generator: unique ids, INSERTs over keep-alive HTTP from several threads, every answer recorded.

Each request is one line of JSON in the record file:

    {"mode": "durable", "table": "db.t_durable", "first": 1201, "count": 3, "bad": [1202],
     "status": 200, "ack": "durable", "code": null, "error": null, "t": 3.214}

`first`..`first+count-1` are the ids the request carried (a request's ids are contiguous), `bad` the ids in it
that ClickHouse will refuse (a non-date in the Date column), `status` the HTTP status (0: no answer: connection
refused, reset, timed out), `ack` the X-Batchhouse-Ack header, `code` the ClickHouse exception code of an error
(`X-ClickHouse-Exception-Code`, else `Code: N` in the body), `t` seconds since the load began. A request is
acknowledged only with status 200; every other one may or may not have landed.

Run alone: python3 loadgen.py --port P --table enqueued=db.t_enqueued --seconds 5 --record acks.jsonl
"""

import argparse
import http.client
import json
import random
import re
import threading
import time

from common import values_row

CODE = re.compile(r"Code: (\d+)")


class LoadGenerator:
    def __init__(
        self,
        port,
        tables,
        record_path,
        threads=None,
        multi_fraction=0.15,
        max_multi=10,
        payload_length=24,
        bad_every=0,
        bad_limit=0,
        first_id=1,
        timeout=40.0,
        seed=1,
        pause=0.0,
    ):
        """`tables`: {mode: qualified table}; `threads`: {mode: thread count} (default 2 each, flushed 10, since
        a flushed answer waits for its batch's flush). `bad_every`: every Nth request of a thread carries one bad
        row, up to `bad_limit` bad rows per mode (0: none)."""
        self.port = port
        self.tables = dict(tables)
        self.record = open(record_path, "a", buffering=1)
        self.threads_per_mode = threads or {mode: (10 if mode == "flushed" else 2) for mode in self.tables}
        self.multi_fraction = multi_fraction
        self.max_multi = max_multi
        self.payload_length = payload_length
        self.bad_every = bad_every
        self.bad_limit = bad_limit
        self.timeout = timeout
        self.seed = seed
        self.pause = pause
        self._next_id = first_id
        self._lock = threading.Lock()
        self._bad_sent = {mode: 0 for mode in self.tables}
        self._stop = threading.Event()
        self._threads = []
        self._started = None
        self.sent = 0
        self.acknowledged = 0

    def _ids(self, count):
        with self._lock:
            first = self._next_id
            self._next_id += count
            return first

    def _take_bad(self, mode):
        with self._lock:
            if self._bad_sent[mode] >= self.bad_limit:
                return False
            self._bad_sent[mode] += 1
            return True

    def _write(self, entry, acknowledged):
        line = json.dumps(entry, separators=(",", ":"))
        with self._lock:
            if self.record.closed:
                return
            self.record.write(line + "\n")
            self.sent += 1
            if acknowledged:
                self.acknowledged += 1

    def start(self):
        self._started = time.monotonic()
        index = 0
        for mode, table in self.tables.items():
            for _ in range(self.threads_per_mode.get(mode, 2)):
                thread = threading.Thread(target=self._run, args=(mode, table, index), daemon=True)
                thread.start()
                self._threads.append(thread)
                index += 1
        return self

    def stop(self, wait=True):
        """Stops sending; waits for answers still outstanding (bounded by the request timeout)."""
        self._stop.set()
        if wait:
            for thread in self._threads:
                thread.join(self.timeout + 5)
        with self._lock:
            if not self.record.closed:
                self.record.flush()

    def close(self):
        self.stop()
        with self._lock:
            self.record.close()

    def _run(self, mode, table, index):
        rng = random.Random(self.seed * 1000 + index)
        connection = None
        request_number = 0
        while not self._stop.is_set():
            request_number += 1
            count = rng.randint(2, self.max_multi) if rng.random() < self.multi_fraction else 1
            with_bad = bool(self.bad_every) and request_number % self.bad_every == 0 and self._take_bad(mode)
            if with_bad and count == 1 and rng.random() < 0.5:
                count = 3  # a bad row alone, or in the middle of a multi-row request
            first = self._ids(count)
            bad = [first + count // 2] if with_bad else []
            body = "INSERT INTO %s (id, payload, d) VALUES %s" % (
                table,
                ",".join(values_row(i, self.payload_length, bad=(i in bad)) for i in range(first, first + count)),
            )
            entry = {"mode": mode, "table": table, "first": first, "count": count, "bad": bad}
            status, ack, code, error = 0, None, None, None
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                connection.request("POST", "/", body=body.encode(), headers={"Content-Type": "text/plain"})
                response = connection.getresponse()
                answer = response.read()
                status = response.status
                ack = response.getheader("X-Batchhouse-Ack")
                if status != 200:
                    header = response.getheader("X-ClickHouse-Exception-Code")
                    match = CODE.search(answer[:512].decode(errors="replace"))
                    code = int(header) if header and header.isdigit() else (int(match.group(1)) if match else None)
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as failure:
                error = type(failure).__name__ + ": " + str(failure)[:120]
                if connection is not None:
                    connection.close()
                connection = None
            entry.update(
                status=status, ack=ack, code=code, error=error, t=round(time.monotonic() - self._started, 3)
            )
            self._write(entry, status == 200)
            if status == 0:
                # The proxy is down (killed, restarting): do not spin.
                self._stop.wait(0.05)
            elif status != 200:
                self._stop.wait(0.01)
            elif self.pause:
                self._stop.wait(self.pause)
        if connection is not None:
            connection.close()


def read_record(path):
    """The request lines of a record file."""
    entries = []
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if line:
                entries.append(json.loads(line))
    return entries


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="Batchhouse's port on 127.0.0.1")
    parser.add_argument("--table", action="append", required=True, help="MODE=db.table (repeat)")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--record", required=True)
    parser.add_argument("--first-id", type=int, default=1)
    arguments = parser.parse_args()
    tables = dict(item.split("=", 1) for item in arguments.table)
    load = LoadGenerator(arguments.port, tables, arguments.record, first_id=arguments.first_id).start()
    time.sleep(arguments.seconds)
    load.close()
    print("sent %d requests, %d acknowledged" % (load.sent, load.acknowledged))


if __name__ == "__main__":
    main()
