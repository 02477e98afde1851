"""The fault suite: scenarios that hurt Batchhouse (the release binary) or its ClickHouse 18.16 while a load runs,
then an oracle over what landed. docs/testing.md describes every scenario and what it expects.

Usage (scripts/fault-suite does the setup: the binary, a ClickHouse of its own, the environment):

    python3 suite.py [--results DIR] [SCENARIO ...]        (none named: all of them; --list lists them)

Environment: BATCHHOUSE_BINARY, CLICKHOUSE_URL, CLICKHOUSE_PID, CLICKHOUSE_DIR, CLICKHOUSE_HTTP_PORT,
CLICKHOUSE_TCP_PORT, CLICKHOUSE_INTERSERVER_PORT (to kill and restart that server), BATCHHOUSE_REPO.
Exit status 1 when a scenario's expectation failed.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bhproxy import Proxy  # noqa: E402
from common import ClickHouse, free_port, log, values_row  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from loadgen import LoadGenerator, read_record  # noqa: E402
from oracle import check_mode, dead_letter_ids  # noqa: E402
import spoolfmt  # noqa: E402

MODES = ("enqueued", "durable", "flushed")
FRESH_BASE = 9_000_000_000
WARM_BASE = 8_000_000_000
# Every crash point must be reached; a binary without one fails its scenario.
MAYBE_UNWIRED = set()
# Every crash point expects exactly once: batches in flight at a kill are settled through system.query_log at the
# next start (docs/spool-and-acks.md, "Exactly once"). FAULT_SUITE_EXACTLY_ONCE=0 judges the points other than
# after-commit and during-recovery against the at-least-once window instead (what a build without that check does).
EXACTLY_ONCE = os.environ.get("FAULT_SUITE_EXACTLY_ONCE", "1") == "1"


class Context:
    def __init__(self, results):
        self.repo = os.environ.get("BATCHHOUSE_REPO") or os.path.abspath(
            os.path.join(os.path.dirname(__file__), "..", ".."))
        self.binary = os.environ.get("BATCHHOUSE_BINARY") or os.path.join(self.repo, ".build/release/batchhouse")
        self.clickhouse = ClickHouse(os.environ["CLICKHOUSE_URL"])
        self.clickhouse_pid = int(os.environ.get("CLICKHOUSE_PID") or 0)
        self.clickhouse_dir = os.environ.get("CLICKHOUSE_DIR")
        self.clickhouse_ports = {
            name: os.environ.get(name) for name in
            ("CLICKHOUSE_HTTP_PORT", "CLICKHOUSE_TCP_PORT", "CLICKHOUSE_INTERSERVER_PORT")
        }
        self.results = results
        self.work = tempfile.mkdtemp(prefix="bh-fault-suite.")
        self.seed = int(os.environ.get("FAULT_SUITE_SEED", "1"))
        self.current = None  # the Run of the scenario under way, so whatever it started is stopped

    def restart_clickhouse(self):
        """Starts ClickHouse again on its folder (data kept) and ports, after it was killed."""
        environment = dict(os.environ)
        environment.update({name: value for name, value in self.clickhouse_ports.items() if value})
        output = subprocess.run(
            [os.path.join(self.repo, "scripts/clickhouse-start"), self.clickhouse_dir],
            env=environment, stdout=subprocess.PIPE, check=True, text=True,
        ).stdout
        for line in output.splitlines():
            if line.startswith("CLICKHOUSE_PID="):
                self.clickhouse_pid = int(line.split("=", 1)[1])
        return self.clickhouse.wait_ready(30)


class Run:
    """One scenario's database, tables, spool, proxy, load and verdict."""

    def __init__(self, context, name, description, expectation):
        self.context = context
        context.current = self
        self.name = name
        self.clickhouse = context.clickhouse
        self.database = "fs_%s_%s" % (name.replace("-", "_"), os.urandom(4).hex())
        self.tables = {mode: "%s.t_%s" % (self.database, mode) for mode in MODES}
        self.work = os.path.join(context.work, name)
        os.makedirs(self.work, exist_ok=True)
        self.spool_dir = os.path.join(self.work, "spool")
        self.dead_letter_dir = os.path.join(self.work, "dead-letter")
        self.record_path = os.path.join(self.work, "requests.jsonl")
        self.config_path = os.path.join(self.work, "batchhouse.yaml")
        self.port = free_port()
        self.proxy = Proxy(context.binary, self.config_path, self.port, context.results, name)
        self.load = None
        self.payload_length = 24
        self.extra_ids = set()  # rows the scenario inserted besides the load (warm-up), not counted
        # {mode: {id: crashes}}: ids ClickHouse held while the spool of a killed proxy still had them
        # undelivered, counted per crash (each may replay them once more).
        self.window = {mode: {} for mode in MODES}
        self.crashes = 0
        self.started = time.monotonic()
        self.result = {
            "scenario": name,
            "description": description,
            "expectation": expectation,
            "status": "pass",
            "reasons": [],
            "notes": [],
            "modes": {},
        }

    # Setup

    def create_tables(self, sleeping_view_on=None):
        self.clickhouse.query("CREATE DATABASE %s" % self.database)
        for table in self.tables.values():
            self.clickhouse.query(
                "CREATE TABLE %s (id UInt64, payload String, d Date) ENGINE = MergeTree ORDER BY id" % table)
        if sleeping_view_on:
            # Runs after the source part is written, so rows are visible while the INSERT still runs: the window
            # between ClickHouse's commit and its answer (and so the proxy's delivered mark) widens by 1 s a block.
            self.clickhouse.query(
                "CREATE MATERIALIZED VIEW %s.slow_view ENGINE = MergeTree ORDER BY id AS "
                "SELECT id, sleep(1) AS slept FROM %s" % (self.database, self.tables[sleeping_view_on]))
            self.note("a materialized view sleeping 1 s per block on %s" % self.tables[sleeping_view_on])

    def write_config(self, upstream_url, timeout="30s", spool=True, max_delay="200ms"):
        lines = [
            "listen: 127.0.0.1:%d" % self.port,
            "upstream: { servers: [%s], timeout: %s }" % (upstream_url, timeout),
            "defaults: { strategy: hybrid, max_rows: 300, max_delay: %s, retry_backoff: 100ms, ack: enqueued }"
            % max_delay,
            "tables:",
        ]
        lines += ["  %s: { ack: %s }" % (table, mode) for mode, table in self.tables.items()]
        if spool:
            lines.append("spool: { dir: %s }" % self.spool_dir)
        lines.append("dead_letter_dir: %s" % self.dead_letter_dir)
        with open(self.config_path, "w") as handle:
            handle.write("\n".join(lines) + "\n")

    def begin(self, upstream_url=None, crash_at=None, sleeping_view_on=None):
        """How every scenario starts: its tables, the configuration (upstream: the suite's ClickHouse unless
        given), and the proxy."""
        self.create_tables(sleeping_view_on=sleeping_view_on)
        self.write_config(upstream_url or self.clickhouse.url)
        self.start_proxy(crash_at=crash_at)

    def start_proxy(self, crash_at=None):
        if not self.proxy.start(crash_at=crash_at):
            # An armed point may be reached before the proxy answers its first /ping (during-recovery: a replayed
            # batch lands at once); wait_for_crash then finds it dead.
            if crash_at and self.proxy.wait_exit(1) == -signal.SIGKILL:
                return
            raise ScenarioError("the proxy did not start (log: %s)" % self.proxy.log_paths[-1])

    def warm_up(self):
        """One acknowledged row per table while ClickHouse is reachable: the proxy then knows the client's
        identity, and keeps taking its rows while ClickHouse is unreachable (docs/credentials.md: an identity
        never verified gets 503, code 210, during an outage). These ids are left out of the oracle's counts."""
        for index, table in enumerate(self.tables.values()):
            row_id = WARM_BASE + index
            self.extra_ids.add(row_id)
            answer = self.proxy.request("POST", "/", body=("INSERT INTO %s (id, payload, d) VALUES %s" % (
                table, values_row(row_id, self.payload_length))).encode(), timeout=30)
            if not answer or answer[0] != 200:
                raise ScenarioError("warm-up insert answered %s" % (answer[0] if answer else "nothing"))

    def snapshot_window(self, settle_timeout=10):
        """Right after the proxy died: which ids are already in ClickHouse although the spool has not marked
        them delivered. That is the at-least-once window of README's "Exactly once?" (committed, not yet
        marked): a restart replays them. Waits first for INSERTs the dead proxy left running in ClickHouse
        (18.16 finishes a request whose client went away)."""
        deadline = time.monotonic() + settle_timeout
        while time.monotonic() < deadline:
            running = self.clickhouse.query(
                "SELECT count() FROM system.processes WHERE query LIKE '%%%s.%%' AND query NOT LIKE "
                "'%%system.processes%%'" % self.database).strip()
            if running == "0":
                break
            time.sleep(0.1)
        else:
            self.note("INSERTs of the killed proxy still running in ClickHouse after %d s" % settle_timeout)
        self.crashes += 1
        table_mode = {table.split(".", 1)[1]: mode for mode, table in self.tables.items()}
        undelivered = {mode: set() for mode in MODES}
        for record in spoolfmt.undelivered_chunks(spoolfmt.read_spool(self.spool_dir)):
            mode = table_mode.get(record.table)
            if mode:
                undelivered[mode].update(record.ids)
        sizes = []
        for mode, table in self.tables.items():
            present = {int(line) for line in self.clickhouse.query(
                "SELECT DISTINCT id FROM %s FORMAT TSV" % table).splitlines() if line}
            inside = present & undelivered[mode]
            for row_id in inside:
                self.window[mode][row_id] = self.window[mode].get(row_id, 0) + 1
            sizes.append("%s %d" % (mode, len(inside)))
        self.note("at the kill, in ClickHouse but not marked delivered in the spool (the at-least-once window): "
                  + ", ".join(sizes))

    def start_load(self, **options):
        options.setdefault("payload_length", self.payload_length)
        options.setdefault("seed", self.context.seed)
        self.payload_length = options["payload_length"]
        self.load = LoadGenerator(self.port, self.tables, self.record_path, **options).start()
        return self.load

    # Verdict

    def fail(self, reason):
        if self.result["status"] == "skipped":
            # The scenario could not make its fault happen: what the oracle found is reported, not judged.
            self.note("would fail: " + reason)
            return
        self.result["status"] = "fail"
        self.result["reasons"].append(reason)

    def skip(self, reason):
        if self.result["status"] == "pass":
            self.result["status"] = "skipped"
        self.result["reasons"].append(reason)

    def note(self, text):
        self.result["notes"].append(text)

    def drain(self, timeout=45):
        """Waits until the proxy holds nothing undelivered: no buffered or queued rows, no undelivered spool
        chunk, twice in a row."""
        deadline = time.monotonic() + timeout
        stable = 0
        while time.monotonic() < deadline:
            health = self.proxy.health() or {}
            metrics = self.proxy.metrics()
            if (health.get("buffered_rows") == 0 and health.get("buffered_bytes") == 0
                    and metrics.get("batchhouse_spool_undelivered_chunks", 0) == 0):
                stable += 1
                if stable >= 2:
                    return True
            else:
                stable = 0
            time.sleep(0.25)
        self.note("not drained within %d s: %s" % (timeout, json.dumps(self.proxy.health())))
        return False

    def fresh_rows(self, timeout=15):
        """One more row per mode through the proxy after the fault: it must be answered 200 and land."""
        outcome = {}
        ids = {}
        for index, (mode, table) in enumerate(self.tables.items()):
            row_id = FRESH_BASE + index
            ids[mode] = row_id
            answer = self.proxy.request(
                "POST", "/", body=("INSERT INTO %s (id, payload, d) VALUES %s" % (
                    table, values_row(row_id, self.payload_length))).encode(), timeout=30)
            outcome[mode] = "answered %s" % (answer[0] if answer else "nothing")
            if answer and answer[0] == 200:
                outcome[mode] = "not landed within %d s" % timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for mode, row_id in ids.items():
                if outcome[mode].startswith("not landed") and self.clickhouse.ids_present(self.tables[mode], [row_id]):
                    outcome[mode] = "ok"
            if all(not value.startswith("not landed") for value in outcome.values()):
                break
            time.sleep(0.2)
        return outcome, set(ids.values())

    def finish(self, allowed_lost=None, fresh=True, stop=True):
        """Drain, fresh rows, graceful stop, then the oracle over every mode's table."""
        allowed_lost = allowed_lost or {}
        if self.load:
            self.load.close()
        fresh_outcome, fresh_ids = ({}, set())
        if self.proxy.alive():
            self.drain()
            if fresh:
                fresh_outcome, fresh_ids = self.fresh_rows()
            metrics = self.proxy.metrics()
            self.result["proxy_metrics"] = {
                name: metrics.get(name, 0) for name in (
                    "batchhouse_spool_corruptions_total", "batchhouse_upstream_retries_total",
                    "batchhouse_spool_undelivered_chunks", "batchhouse_dead_letter_rows_total")
                if name in metrics
            }
            if stop:
                status = self.proxy.stop()
                if status != 0:
                    self.note("graceful stop exited %s" % status)
        entries = read_record(self.record_path) if os.path.exists(self.record_path) else []
        dead = dead_letter_ids(self.dead_letter_dir)
        for mode, table in self.tables.items():
            rows = self.clickhouse.rows(table)
            result = check_mode(mode, entries, rows, self.payload_length, allowed_lost.get(mode, ()), dead,
                                fresh_ids | self.extra_ids, self.window[mode])
            result["fresh_row"] = fresh_outcome.get(mode, "not tried")
            self.result["modes"][mode] = result
        self.result["requests"] = len(entries)
        self.result["requests_failed"] = len([e for e in entries if e["status"] != 200])
        self.result["seconds"] = round(time.monotonic() - self.started, 1)
        return self.result

    def resent_at_least_once(self):
        """{mode: rows} of the batches the proxy logged as sent again at least once: an attempt without an answer
        whose outcome ClickHouse could not tell (docs/spool-and-acks.md, "Exactly once": a server killed between its
        commit and its query log has no trace of the query once restarted, or no query log yet at all)."""
        rows = {mode: 0 for mode in MODES}
        tables = {table: mode for mode, table in self.tables.items()}
        for line in self.proxy.logs().splitlines():
            if "sending it again (at least once)" not in line:
                continue
            # swift-log writes the metadata sorted by key, so `rows` and `table` come after the free-text `reason`:
            # the last match is theirs.
            table = re.findall(r"\btable=(\S+)", line)
            count = re.findall(r"\brows=(\d+)", line)
            if table and count and table[-1] in tables:
                rows[tables[table[-1]]] += int(count[-1])
        return rows

    def snapshot_in_flight(self):
        """Right after ClickHouse died: the ids the spool holds undelivered (in flight, queued or still buffered).
        Only those can be sent again without ClickHouse's answer, each at most once more: they become the window
        the oracle judges duplicates against (`expect_standard(resent=...)`)."""
        table_mode = {table.split(".", 1)[1]: mode for mode, table in self.tables.items()}
        sizes = {mode: 0 for mode in MODES}
        records = []
        for path in spoolfmt.segment_files(self.spool_dir):
            try:
                records += spoolfmt.read_segment(path)
            except Exception:  # noqa: BLE001
                # Reclaimed meanwhile (everything in it was delivered), or being written: a record missed here only
                # narrows the window, so the judgement can only get stricter.
                pass
        for record in spoolfmt.undelivered_chunks(records):
            mode = table_mode.get(record.table)
            if mode:
                for row_id in record.ids:
                    self.window[mode][row_id] = 1
                sizes[mode] += len(record.ids)
        self.note("undelivered in the spool when ClickHouse died: " + ", ".join(
            "%s %d" % (mode, sizes[mode]) for mode in MODES))

    def expect_standard(self, lost=0, exactly_once=True, fresh=True, resent=None):
        """What every scenario expects unless it says otherwise: nothing acknowledged lost, nothing twice, every
        payload intact, nothing landed that was never sent, the right ack header, a fresh row through.

        `exactly_once=False` (a crash at a point that is not about the commit-to-mark window): duplicates are
        allowed only inside that window, as README's "Exactly once?" documents: ids ClickHouse held while the
        killed proxy's spool had them undelivered, at most once more per crash. Any other duplicate fails.

        `resent` ({mode: rows}, from `resent_at_least_once`, with the window from `snapshot_in_flight`): duplicates
        are allowed only for ids undelivered when ClickHouse died, at most once more, and no more duplicate rows than
        the batches the proxy itself reported as sent again at least once."""
        for mode, result in self.result["modes"].items():
            if result["lost"] > lost:
                self.fail("%s: %d acknowledged ids lost (e.g. %s)" % (mode, result["lost"], result["examples"]["lost"]))
            allowed = (resent or {}).get(mode, 0)
            if allowed:
                result["reported_at_least_once"] = allowed
            if resent is not None and result["duplicated_outside_window"]:
                self.fail("%s: %d ids landed more than once that were not undelivered in the spool when ClickHouse "
                          "died, or more than twice (e.g. %s)" % (
                              mode, result["duplicated_outside_window"], result["examples"]["duplicated_outside_window"]))
            elif resent is not None and result["duplicate_rows"] > allowed:
                self.fail("%s: %d rows landed twice, more than the %d the proxy reported sent again at least once "
                          "(e.g. %s)" % (mode, result["duplicate_rows"], allowed, result["examples"]["duplicated"]))
            elif resent is not None and result["duplicated"]:
                self.note("%s: %d rows landed twice, all undelivered when ClickHouse died and within the %d rows the "
                          "proxy reported sent again at least once" % (mode, result["duplicate_rows"], allowed))
            elif exactly_once and result["duplicated"]:
                self.fail("%s: %d ids landed more than once (%d extra rows, %d of the ids in the at-least-once "
                          "window; e.g. %s)" % (
                              mode, result["duplicated"], result["duplicate_rows"], result["duplicated_in_window"],
                              result["examples"]["duplicated"]))
            elif result["duplicated_outside_window"]:
                self.fail("%s: %d ids landed more than once outside the at-least-once window (e.g. %s)" % (
                    mode, result["duplicated_outside_window"], result["examples"]["duplicated_outside_window"]))
            if result["damaged"]:
                self.fail("%s: %d ids landed with a payload or date not derived from the id (e.g. %s)" % (
                    mode, result["damaged"], result["examples"]["damaged"]))
            if result["unexpected"]:
                self.fail("%s: %d ids landed that no request carried" % (mode, result["unexpected"]))
            if result["wrong_ack_header"]:
                self.fail("%s: %d ids acknowledged with another X-Batchhouse-Ack" % (mode, result["wrong_ack_header"]))
            if result["bad_landed"]:
                self.fail("%s: %d rows ClickHouse refuses landed anyway" % (mode, result["bad_landed"]))
            if result["refused_landed"]:
                self.fail("%s: %d ids of requests refused with 503 (code 243) landed" % (mode, result["refused_landed"]))
            if fresh and result["fresh_row"] != "ok":
                self.fail("%s: fresh row after the fault: %s" % (mode, result["fresh_row"]))
        if sum(result["acknowledged"] for result in self.result["modes"].values()) == 0:
            self.fail("nothing was acknowledged: the load did not run")


class ScenarioError(Exception):
    pass


# Scenarios: each takes the context and returns its Run (result in run.result).

CRASH_COUNTS = {
    "after-spool-write": 2500,
    "after-fsync": 1000,
    "before-ack": 2500,
    "after-sending-mark": 12,
    "after-commit": 12,
}


def wait_for_crash(run, point, timeout=10.0):
    """True when the proxy died by SIGKILL (its own, from the armed point) within `timeout`."""
    status = run.proxy.wait_exit(timeout)
    if status is None:
        if point in MAYBE_UNWIRED:
            run.skip("not wired (%s never reached in %.0f s of load)" % (point, timeout))
        else:
            run.fail("point not reached: %s (the proxy did not die within %.0f s of load)" % (point, timeout))
        return False
    if status != -signal.SIGKILL:
        run.fail("the proxy exited with %s, not by SIGKILL at %s (log: %s)" % (status, point, run.proxy.log_paths[-1]))
        return False
    run.note("killed itself at %s after %.1f s of load (%d requests sent)" % (
        point, time.monotonic() - run.load_started, run.load.sent))
    return True


def crash_scenario(point):
    def scenario(context):
        count = CRASH_COUNTS[point]
        run = Run(
            context, point,
            "SIGKILL at the crash point %s@%d (BATCHHOUSE_CRASH_AT) under load, restart without it on the same spool"
            % (point, count),
            "no acknowledged id lost, payloads intact, a fresh row lands, "
            + ("exactly once: 0 duplicates, though the crash falls between ClickHouse's commit and the "
               "delivered mark" if point == "after-commit" or EXACTLY_ONCE else
               "no duplicate outside the at-least-once window (ids committed but not marked delivered when the "
               "proxy died)"),
        )
        run.begin(crash_at="%s@%d" % (point, count),
                  sleeping_view_on="enqueued" if point == "after-commit" else None)
        run.start_load()
        run.load_started = time.monotonic()
        crashed = wait_for_crash(run, point)
        if crashed:
            run.snapshot_window()  # meanwhile the load keeps trying: those requests fail, unacknowledged
            run.start_proxy()
            time.sleep(1.5)
        run.finish()
        run.expect_standard(exactly_once=EXACTLY_ONCE or point == "after-commit")
        return run

    return scenario


def during_recovery(context):
    run = Run(
        context, "during-recovery",
        "SIGKILL at after-commit@%d, restart with during-recovery armed (dies when a replayed batch was committed, "
        "before its delivered mark), restart again clean" % CRASH_COUNTS["after-commit"],
        "no acknowledged id lost, none twice (exactly once across two crashes), a fresh row lands",
    )
    run.begin(crash_at="after-commit@%d" % CRASH_COUNTS["after-commit"])
    run.start_load()
    run.load_started = time.monotonic()
    if wait_for_crash(run, "after-commit"):
        run.snapshot_window()
        undelivered = len(spoolfmt.undelivered_chunks(spoolfmt.read_spool(run.spool_dir)))
        run.note("%d undelivered chunks in the spool to replay" % undelivered)
        run.start_proxy(crash_at="during-recovery")
        run.load_started = time.monotonic()
        if wait_for_crash(run, "during-recovery"):
            run.snapshot_window()
            run.start_proxy()
            time.sleep(1.5)
    run.finish()
    run.expect_standard()
    return run


def clickhouse_kill_scenario(name, description, expectation, sleeping_view_on=None):
    """ClickHouse SIGKILLed under load and restarted 2 s later on the same data and ports. A batch it committed just
    before the kill, but had not logged, cannot be told from one it never received: the proxy sends it again and
    says so. Only ids undelivered at the kill may land twice, and no more rows than the proxy reported. With a
    sleeping view, such a batch is nearly always in flight, so one must be reported for that mode."""
    def scenario(context):
        run = Run(context, name, description, expectation)
        run.begin(sleeping_view_on=sleeping_view_on)
        run.start_load()
        time.sleep(1.5)
        os.kill(context.clickhouse_pid, signal.SIGKILL)
        run.snapshot_in_flight()
        killed_at = run.load.sent
        time.sleep(2)
        if not context.restart_clickhouse():
            raise ScenarioError("ClickHouse did not come back")
        run.note("killed after %d requests; back as pid %d; %d requests meanwhile" % (
            killed_at, context.clickhouse_pid, run.load.sent - killed_at))
        time.sleep(2)
        run.finish()
        resent = run.resent_at_least_once()
        if any(resent.values()) or sleeping_view_on:
            run.note("reported sent again at least once: %s rows" % (
                ", ".join("%s %d" % (mode, rows) for mode, rows in resent.items())))
        if sleeping_view_on and not resent[sleeping_view_on]:
            run.fail("%s: no batch was reported sent again at least once, though an insert was in flight in the "
                     "sleeping view when ClickHouse died" % sleeping_view_on)
        run.expect_standard(resent=resent)
        return run

    return scenario


clickhouse_kill = clickhouse_kill_scenario(
    "clickhouse-kill", "ClickHouse SIGKILLed under load, restarted 2 s later on the same data and ports",
    "no acknowledged id lost, none twice but the rows the proxy reports sent again at least once (a batch "
    "ClickHouse committed and died before logging), a fresh row lands")

clickhouse_kill_mid_insert = clickhouse_kill_scenario(
    "clickhouse-kill-mid-insert",
    "ClickHouse SIGKILLed while it runs an insert it has already committed (a materialized view sleeping 1 s per "
    "block on the enqueued table), restarted 2 s later on the same data and ports",
    "no acknowledged id lost; the in-flight batch is reported sent again at least once, and only its rows may land "
    "twice; a fresh row lands",
    sleeping_view_on="enqueued")


def clickhouse_stop(context):
    run = Run(context, "clickhouse-stop", "ClickHouse SIGSTOPped for 5 s under load, then SIGCONT",
              "no acknowledged id lost, none twice, a fresh row lands")
    run.begin()
    run.start_load()
    time.sleep(1.5)
    before = run.load.acknowledged
    os.kill(context.clickhouse_pid, signal.SIGSTOP)
    try:
        time.sleep(5)
    finally:
        os.kill(context.clickhouse_pid, signal.SIGCONT)
    run.note("%d requests acknowledged while ClickHouse was stopped" % (run.load.acknowledged - before))
    time.sleep(2)
    run.finish()
    run.expect_standard()
    return run


def clickhouse_flaky(context):
    upstream_port = int(context.clickhouse.port)
    faults = FaultProxy("127.0.0.1", upstream_port)
    run = Run(context, "clickhouse-flaky",
              "a fault proxy in front of ClickHouse: 1 s pass, 1.5 s slow (5 ms per KiB), 1.5 s of 503 "
              "(X-ClickHouse-Exception-Code 202), 1.5 s pass, 1.5 s of connections dropped mid-request, then pass",
              "no acknowledged id lost, none twice, a fresh row lands")
    try:
        run.begin(faults.url)
        run.start_load()
        # The pass between the 503s and the drops lets the proxy's breaker close again (it pings every second).
        schedule = [(1.0, "slow", 0.005), (2.5, "error503"), (4.0, "pass"), (5.5, "drop"), (7.0, "pass")]
        faults.run_schedule(schedule).join()
        time.sleep(1.5)
        run.note("fault proxy requests per mode: %s" % json.dumps(faults.stats))
        for mode in ("slow", "error503", "drop_mid_body"):
            if not faults.stats[mode]:
                run.fail("no upstream request met the %s fault" % mode)
        run.finish()
        run.expect_standard()
    finally:
        faults.close()
    return run


def refused_rows(context):
    run = Run(context, "refused-rows",
              "4 rows per mode that ClickHouse refuses (a non-date in a Date column; the scanner accepts them), "
              "alone or inside a 3-row request, among the load",
              "the bad ids do not land and are in the dead-letter folder; every other acknowledged id lands once")
    run.begin()
    run.start_load(bad_every=8, bad_limit=4)
    time.sleep(4)
    run.finish()
    run.expect_standard()
    for mode, result in run.result["modes"].items():
        if result["bad_sent"] == 0:
            run.fail("%s: no bad row was sent" % mode)
        elif result["bad_dead_lettered"] != result["bad_sent"]:
            run.fail("%s: %d of %d bad rows in the dead-letter folder" % (
                mode, result["bad_dead_lettered"], result["bad_sent"]))
        if result["good_dead_lettered"]:
            run.fail("%s: %d acknowledged good rows in the dead-letter folder (a bad row took them along)" % (
                mode, result["good_dead_lettered"]))
    return run


def spool_full(context):
    run = Run(context, "spool-full",
              "spool.dir on a 4 MiB tmpfs, ClickHouse unreachable (fault proxy refuses connections) until the "
              "spool disk is full and inserts get 503, then reachable again",
              "503 code 243 while full (those rows never land); acknowledged ids land once; new rows go through "
              "once space is back")
    if os.geteuid() != 0:
        run.skip("needs root to mount a tmpfs")
        return run
    disk = os.path.join(run.work, "disk")
    os.makedirs(disk, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", disk], check=True)
    faults = FaultProxy("127.0.0.1", int(context.clickhouse.port))
    try:
        run.spool_dir = os.path.join(disk, "spool")
        run.begin(faults.url)
        run.payload_length = 400
        run.warm_up()
        faults.set_mode("refuse")
        run.start_load(payload_length=400, multi_fraction=0.6, max_multi=8)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            refused = [e for e in read_record(run.record_path) if e["status"] == 503 and e.get("code") == 243]
            if len(refused) >= 30:
                break
            time.sleep(0.5)
        run.note("disk full after %.1f s (%d requests refused so far); ClickHouse reachable again" % (
            time.monotonic() - run.started, len(refused)))
        faults.set_mode("pass")
        time.sleep(3)
        run.finish()
        run.expect_standard()
        if not any(result["refused_full"] for result in run.result["modes"].values()):
            run.fail("no request was refused with 503 code 243: the spool disk never filled")
    finally:
        faults.close()
        if run.proxy.alive():
            run.proxy.kill()
        subprocess.run(["umount", disk], check=False)
    return run


def spool_damage(kind):
    def scenario(context):
        if kind == "torn":
            fault = ("the newest segment truncated in the middle of its last record of an enqueued or durable "
                     "table whose rows were acknowledged (the records after it go too)")
        else:
            fault = ("4 bytes flipped in the middle of the data of one record of an enqueued or durable table whose "
                     "rows were acknowledged")
        run = Run(context, "spool-" + kind,
                  "rows held in the spool (ClickHouse unreachable), proxy SIGKILLed, then %s; restart with "
                  "ClickHouse back" % fault,
                  "exactly the ids of the damaged record(s) are lost (parsed from the segment), logged as "
                  "\"spool corruption skipped\" and counted; everything else acknowledged lands once")
        faults = FaultProxy("127.0.0.1", int(context.clickhouse.port))
        try:
            run.begin(faults.url)
            run.warm_up()
            faults.set_mode("refuse")
            run.start_load()
            time.sleep(2.5)
            run.proxy.kill()
            run.load.close()
            damaged = damage_spool(run, kind)
            faults.set_mode("pass")
            run.start_proxy()
            run.load = None  # stopped above; the damaged spool is replayed without new load
            run.finish(allowed_lost=damaged)
            run.expect_standard()
            logs = run.proxy.logs()
            if "spool corruption skipped" not in logs:
                run.fail("no \"spool corruption skipped\" in the restarted proxy's log")
            corruptions = run.result.get("proxy_metrics", {}).get("batchhouse_spool_corruptions_total", 0)
            if corruptions < 1:
                run.fail("batchhouse_spool_corruptions_total is %s" % corruptions)
            for mode, result in run.result["modes"].items():
                if result["allowed_lost_landed"]:
                    run.fail("%s: %d ids of the damaged record landed (it should have been skipped)" % (
                        mode, result["allowed_lost_landed"]))
            if not any(result["lost_allowed"] for result in run.result["modes"].values()):
                run.fail("the damaged record held no acknowledged id")
        finally:
            faults.close()
        return run

    return scenario


def damage_spool(run, kind):
    """Damages the spool as the scenario says; returns {mode: ids in the damaged records}."""
    records = spoolfmt.read_spool(run.spool_dir)
    chunks = [r for r in records if r.kind == spoolfmt.CHUNK and r.valid]
    table_mode = {table.split(".", 1)[1]: mode for mode, table in run.tables.items()}
    # Records whose rows were all acknowledged: the record the proxy was writing when it was killed usually was
    # not (its client never got an answer), and damaging only that would show nothing.
    acknowledged = set()
    for entry in read_record(run.record_path):
        if entry["status"] == 200:
            acknowledged.update(range(entry["first"], entry["first"] + entry["count"]))
    candidates = [r for r in chunks if table_mode.get(r.table) in ("enqueued", "durable") and r.ids
                  and acknowledged.issuperset(r.ids)]
    if not candidates:
        raise ScenarioError("no spooled chunk of an enqueued or durable table with acknowledged rows to damage")
    run.note("spool before the damage: %d chunk records in %d segments" % (
        len(chunks), len(spoolfmt.segment_files(run.spool_dir))))
    damaged = {}
    if kind == "torn":
        newest = spoolfmt.segment_files(run.spool_dir)[-1]
        in_newest = [r for r in candidates if r.segment == newest]
        if not in_newest:
            raise ScenarioError("the newest segment holds no chunk to tear")
        victim = in_newest[-1]
        cut = victim.offset + (spoolfmt.RECORD_HEADER + victim.length) // 2
        gone = [r for r in records if r.segment == newest and r.end > cut]
        with open(newest, "r+b") as handle:
            handle.truncate(cut)
        for record in gone:
            if record.kind == spoolfmt.CHUNK:
                damaged.setdefault(table_mode.get(record.table), set()).update(record.ids)
        run.note("torn: %s cut at byte %d, in chunk %d (%d ids); %d records from there on gone" % (
            os.path.basename(newest), cut, victim.chunk_id, len(victim.ids), len(gone)))
    else:
        # A multi-row record if there is one, from the middle of the spool: the records after it must survive.
        several = [r for r in candidates if len(r.ids) > 1] or candidates
        victim = several[len(several) // 2]
        middle = victim.data_offset + victim.data_length // 2
        with open(victim.segment, "r+b") as handle:
            handle.seek(middle)
            original = handle.read(4)
            handle.seek(middle)
            handle.write(bytes(b ^ 0xFF for b in original))
        damaged[table_mode[victim.table]] = set(victim.ids)
        run.note("corrupt: 4 bytes flipped at byte %d of %s, in chunk %d (%s, %d ids)" % (
            middle, os.path.basename(victim.segment), victim.chunk_id, table_mode[victim.table], len(victim.ids)))
    return damaged


SCENARIOS = {
    "after-spool-write": crash_scenario("after-spool-write"),
    "after-fsync": crash_scenario("after-fsync"),
    "before-ack": crash_scenario("before-ack"),
    "after-sending-mark": crash_scenario("after-sending-mark"),
    "after-commit": crash_scenario("after-commit"),
    "during-recovery": during_recovery,
    "clickhouse-kill": clickhouse_kill,
    "clickhouse-kill-mid-insert": clickhouse_kill_mid_insert,
    "clickhouse-stop": clickhouse_stop,
    "clickhouse-flaky": clickhouse_flaky,
    "refused-rows": refused_rows,
    "spool-full": spool_full,
    "spool-torn": spool_damage("torn"),
    "spool-corrupt": spool_damage("corrupt"),
}


# Output

COLUMNS = ("acknowledged", "landed", "lost", "duplicated")


def print_result(result):
    status = result["status"].upper()
    print("\n== %s: %s (%ss)" % (result["scenario"], status, result.get("seconds", "?")), flush=True)
    print("   fault:    %s" % result["description"])
    print("   expected: %s" % result["expectation"])
    for note in result["notes"]:
        print("   note:     %s" % note)
    for mode, figures in result["modes"].items():
        extra = []
        for name in ("lost_allowed", "duplicate_rows", "duplicated_in_window", "damaged", "unacknowledged_landed", "bad_sent", "bad_landed",
                     "bad_dead_lettered", "refused_full", "refused_landed", "unexpected", "wrong_ack_header"):
            if figures.get(name):
                extra.append("%s %d" % (name.replace("_", " "), figures[name]))
        answers = {key: count for key, count in figures.get("answers", {}).items() if key != "200"}
        if answers:
            extra.append("other answers " + " ".join("%s×%d" % item for item in answers.items()))
        print("   %-9s acknowledged %6d  landed %6d  lost %4d  duplicated %4d  fresh row %s%s" % (
            mode, figures["acknowledged"], figures["landed"], figures["lost"], figures["duplicated"],
            figures["fresh_row"], ("  (" + ", ".join(extra) + ")") if extra else ""))
    for reason in result["reasons"]:
        print("   %s: %s" % ("why" if result["status"] != "pass" else "note", reason))
    sys.stdout.flush()


def markdown(results):
    lines = [
        "| scenario | mode | acknowledged | landed | lost | duplicated | result |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for result in results:
        verdict = result["status"]
        if result["reasons"]:
            verdict += ": " + "; ".join(result["reasons"])
        # The examples stay in summary.json; the table keeps the counts.
        verdict = re.sub(r" \(e\.g\. \[[^\]]*\]\)|;? e\.g\. \[[^\]]*\]", "", verdict)
        verdict = " ".join(verdict.replace("|", "\\|").split())
        if not result["modes"]:
            lines.append("| %s | | | | | | %s |" % (result["scenario"], verdict))
        for index, (mode, figures) in enumerate(result["modes"].items()):
            lost = str(figures["lost"])
            if figures.get("lost_allowed"):
                lost += " (+%d in the damaged record)" % figures["lost_allowed"]
            duplicated = str(figures["duplicated"])
            if figures.get("reported_at_least_once"):
                duplicated += " (%d undelivered at the kill; the proxy reported %d rows sent again at least once)" % (
                    figures["duplicated_in_window"], figures["reported_at_least_once"])
            elif figures.get("duplicated_in_window"):
                duplicated += " (%d in the at-least-once window)" % figures["duplicated_in_window"]
            lines.append("| %s | %s | %d | %d | %s | %s | %s |" % (
                result["scenario"] if index == 0 else "", mode, figures["acknowledged"], figures["landed"], lost,
                duplicated, verdict if index == 0 else ""))
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*")
    parser.add_argument("--results", default=os.environ.get("FAULT_SUITE_RESULTS"))
    parser.add_argument("--list", action="store_true")
    arguments = parser.parse_args()
    if arguments.list:
        print("\n".join(SCENARIOS))
        return 0
    names = arguments.scenarios or list(SCENARIOS)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        print("unknown scenario(s): %s; known: %s" % (", ".join(unknown), ", ".join(SCENARIOS)), file=sys.stderr)
        return 2
    results_dir = arguments.results or tempfile.mkdtemp(prefix="bh-fault-results.")
    os.makedirs(results_dir, exist_ok=True)
    context = Context(results_dir)
    random.seed(context.seed)
    log("binary %s, ClickHouse %s, results in %s" % (context.binary, context.clickhouse.url, results_dir))
    results = []
    started = time.monotonic()
    try:
        for name in names:
            log("scenario %s" % name)
            context.current = None
            try:
                result = SCENARIOS[name](context).result
            except Exception as error:  # a scenario that could not run fails, with why
                result = {
                    "scenario": name, "description": "", "expectation": "", "status": "fail",
                    "reasons": ["could not run: %s: %s" % (type(error).__name__, error)], "notes": [], "modes": {},
                }
                if context.current is not None:
                    result["modes"] = context.current.result["modes"]
                    result["notes"] = context.current.result["notes"]
                traceback.print_exc()
            run = context.current
            if run is not None:
                if run.load is not None:
                    run.load.stop(wait=False)
                if run.proxy.alive():
                    run.proxy.kill()
            if not context.clickhouse.ping(2):
                log("ClickHouse does not answer after %s; restarting it" % name)
                try:
                    os.kill(context.clickhouse_pid, signal.SIGCONT)
                except OSError:
                    pass
                if not context.clickhouse.wait_ready(5):
                    context.restart_clickhouse()
            print_result(result)
            results.append(result)
    finally:
        # Interrupted (Ctrl-C) inside a scenario: stop what it started before its folder goes.
        if context.current is not None:
            if context.current.load is not None:
                context.current.load.stop(wait=False)
            if context.current.proxy.alive():
                context.current.proxy.kill()
        if os.environ.get("FAULT_SUITE_KEEP") == "1":
            log("work folder kept: %s" % context.work)
        else:
            shutil.rmtree(context.work, ignore_errors=True)
    summary = {
        "seconds": round(time.monotonic() - started, 1),
        "binary": context.binary,
        "clickhouse": context.clickhouse.query("SELECT version()").strip(),
        "scenarios": results,
    }
    with open(os.path.join(results_dir, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    table = markdown(results)
    with open(os.path.join(results_dir, "summary.md"), "w") as handle:
        handle.write(table)
    failed = [result["scenario"] for result in results if result["status"] == "fail"]
    skipped = [result["scenario"] for result in results if result["status"] == "skipped"]
    print("\n" + table)
    print("fault-suite: %d scenarios in %.0f s: %d passed, %d failed%s, %d skipped%s; results in %s" % (
        len(results), summary["seconds"], len(results) - len(failed) - len(skipped), len(failed),
        " (" + ", ".join(failed) + ")" if failed else "", len(skipped),
        " (" + ", ".join(skipped) + ")" if skipped else "", results_dir))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
