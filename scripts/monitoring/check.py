"""The monitoring check (docs/testing.md, "Monitoring check"): the example alert rules and Grafana dashboard against a
real Prometheus scraping a real proxy in front of a real ClickHouse 18.16. Run it through scripts/monitoring-check,
which installs Debian's prometheus package (promtool comes with it) and picks the Python of scripts/python-env.

    check.py [--render PATH.png] [--load-seconds N] [--firing-timeout S] [--keep]

Steps: promtool checks the rules and a config that loads them; then ClickHouse (scripts/clickhouse-start), the
proxy (BATCHHOUSE_BIN) with a spool and three tables on different strategies and acks, and Prometheus (1 s scrape
and evaluation, the rules under test) start on free loopback ports in a temp folder. A load of single-row INSERTs
with unique ids (a few bad rows and malformed requests among them) runs; then it asserts that Prometheus scraped
the proxy, loaded every alert of the rule file with no evaluation error, that every metric named in the dashboard's
and the rules' expressions is exported, that every dashboard query returns a series over the load, and that the
acknowledged ids are in ClickHouse. --render draws the dashboard's panels from this Prometheus into one PNG. Last,
ClickHouse is stopped and BatchhouseUpstreamDown must go pending, then firing, within --firing-timeout.

Environment: BATCHHOUSE_BIN (default .build/debug/batchhouse), MONITORING_DASHBOARD (default
examples/grafana/batchhouse.json), MONITORING_RULES (default examples/prometheus/alerts.yml), PROMETHEUS and
PROMTOOL (default: from PATH). Everything started here is stopped by its PID at the end. Exit status 1 when a check
failed. Python standard library only, except matplotlib for --render.
"""

import argparse
import http.client
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "scripts", "oracle"))

from common import ClickHouse, Started, free_port, http_get, start_clickhouse, values_row, wait_until  # noqa: E402

DATABASE = "monitoring"
# table: (rule, requests per second, first id). Three strategies and the three ack modes (an immediate table answers
# as flushed), so every label value of batchhouse_insert_latency_seconds{ack} exists.
TABLES = {
    "events": ("{ strategy: hybrid, max_rows: 200, max_delay: 500ms, ack: enqueued }", 60, 1_000_000),
    "logs": ("{ strategy: size, max_rows: 40, max_delay: 2s, ack: durable }", 40, 2_000_000),
    "payments": ("{ strategy: immediate, priority: 1 }", 8, 3_000_000),
}
# Request numbers (per table) that carry a row ClickHouse refuses ('not-a-date' in the Date column): dead letters
# for the batched tables, a ClickHouse refusal (reason "clickhouse") for the immediate one.
BAD_REQUESTS = {150, 600}
# Every this many requests the events loader also sends a malformed INSERT (unterminated tuple): 400, reason "syntax".
MALFORMED_EVERY = 200
# What the dashboard's Grafana variables stand for in the queries sent here.
RATE_WINDOW = "5s"
ALERT = "BatchhouseUpstreamDown"

failures = []


class Aborted(Exception):
    """A failed check after which the rest cannot run (already reported)."""


def say(*parts):
    print("monitoring-check:", *parts, file=sys.stderr, flush=True)


def shown(path):
    """A path relative to the repository when it is inside it."""
    return os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else path


def fail(message):
    failures.append(message)
    say("FAIL:", message)


# --- processes ------------------------------------------------------------------------------------------------------

class Prometheus:
    def __init__(self, port):
        self.port = port

    def api(self, path, **params):
        answer = http_get(self.port, "/api/v1/%s?%s" % (path, urllib.parse.urlencode(params)), timeout=15)
        if answer is None:
            raise RuntimeError("no answer from Prometheus for %s" % path)
        document = json.loads(answer[1])
        if document.get("status") != "success":
            raise RuntimeError("Prometheus %s %r: %s" % (path, params, document.get("error")))
        return document["data"]

    def query(self, expr):
        return self.api("query", query=expr)["result"]

    def query_range(self, expr, start, end, step=1):
        return self.api("query_range", query=expr, start="%.3f" % start, end="%.3f" % end, step=step)["result"]


# --- PromQL ---------------------------------------------------------------------------------------------------------

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
                   "unless", "inf", "nan", "atan2"}


def metric_names(expr):
    """The metric names a PromQL expression selects: identifiers that are not functions, aggregations, keywords,
    label names or values, durations or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"'(?:[^'\\]|\\.)*'", "''", text)
    text = re.sub(r"`[^`]*`", "``", text)
    text = re.sub(r"\{[^}]*\}", " ", text)       # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)      # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    names = []
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] in ".$"):
            continue  # 1e-9, 0.5e3, $variables
        if word.lower() in PROMQL_KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue
        names.append(word)
    return names


def substitute(expr):
    """The dashboard's Grafana variables, as the check and the render use them: every table, a 5 s rate window."""
    for variable in ("$__rate_interval", "${__rate_interval}", "$__interval", "${__interval}"):
        expr = expr.replace(variable, RATE_WINDOW)
    return expr.replace("${table}", ".*").replace("$table", ".*")


def exported_types(metrics_text):
    """{name: type} from the `# TYPE` lines of a Prometheus text exposition."""
    types = {}
    for line in metrics_text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "#" and parts[1] == "TYPE":
            types[parts[2]] = parts[3]
    return types


def exported_labels(metrics_text):
    """{sample name: set of label names} from the samples of a Prometheus text exposition."""
    labels = {}
    for line in metrics_text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s", line)
        if match:
            names = labels.setdefault(match.group(1), set())
            names.update(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="', match.group(3) or ""))
    return labels


def label_names(expr):
    """Label names an expression filters on ({...} matchers) or groups or matches by (by, without, on, ...)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    names = set()
    for matchers in re.findall(r"\{([^}]*)\}", text):
        names.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    for grouping in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        names.update(name.strip() for name in grouping.split(",") if name.strip())
    return names - {"job", "instance", "__name__"}


def missing_labels(expr, labels):
    """Labels the expression uses that none of its metrics carries in /metrics (a missing `table` label would
    otherwise go unseen: table=~".*" matches a series without it)."""
    names = [name for name in metric_names(expr) if labels.get(name) is not None and name != "up"]
    if not names:
        return []
    return sorted("%s (%s carry: %s)" % (label, ", ".join(names),
                                        ", ".join(sorted(set().union(*(labels[n] for n in names)))) or "none")
                  for label in label_names(expr) if not any(label in labels[name] for name in names))


def missing_metrics(names, types):
    missing = []
    for name in names:
        if name in types or name == "up":
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base != name and types.get(base) in ("histogram", "summary"):
            continue
        missing.append(name)
    return missing


def dashboard_targets(dashboard):
    """[(panel, target)] for every panel (rows' nested panels too) with an expression."""
    found = []

    def walk(panels):
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((panel, target))

    walk(dashboard.get("panels", []))
    return found


def rule_alerts(rules_path):
    """Alert names and expressions of a Prometheus rule file (`- alert: NAME` ... `expr:` blocks; PyYAML is not
    needed for the file as written, and promtool has already checked its syntax)."""
    alerts = []
    current = None
    expr_lines = None
    with open(rules_path) as handle:
        for line in handle:
            stripped = line.strip()
            match = re.match(r"-\s*alert:\s*(\S+)", stripped)
            if match:
                current = {"name": match.group(1).strip("'\""), "expr": ""}
                alerts.append(current)
                expr_lines = None
                continue
            if current is None:
                continue
            match = re.match(r"(-\s*)?(record|expr|for|labels|annotations|keep_firing_for):\s*(.*)", stripped)
            if match:
                if match.group(2) == "expr":
                    value = match.group(3)
                    if value in ("|", ">", "|-", ">-"):
                        expr_lines = []
                    else:
                        current["expr"] = value
                        expr_lines = None
                else:
                    expr_lines = None
                continue
            if expr_lines is not None:
                current["expr"] += " " + stripped
    return alerts


# --- load -----------------------------------------------------------------------------------------------------------

class Loader(threading.Thread):
    """Single-row INSERTs with unique ids into one table at a steady rate over one keep-alive connection."""

    def __init__(self, port, table, rate, first_id, stop_at):
        super().__init__(daemon=True)
        self.port, self.table, self.rate, self.next_id, self.stop_at = port, table, rate, first_id, stop_at
        self.acked, self.bad, self.statuses, self.sent = set(), set(), {}, 0
        self.malformed = 0

    def post(self, connection, body):
        try:
            if connection[0] is None:
                connection[0] = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            connection[0].request("POST", "/", body=body.encode())
            response = connection[0].getresponse()
            response.read()
            if response.getheader("connection", "").lower() == "close":
                connection[0].close()
                connection[0] = None
            return response.status
        except (OSError, http.client.HTTPException):
            if connection[0] is not None:
                connection[0].close()
            connection[0] = None
            return 0

    def run(self):
        connection = [None]
        statement = "INSERT INTO %s.%s (id, payload, d) VALUES " % (DATABASE, self.table)
        started = time.monotonic()
        number = 0
        while time.monotonic() < self.stop_at:
            number += 1
            row_id = self.next_id
            self.next_id += 1
            bad = number in BAD_REQUESTS
            status = self.post(connection, statement + values_row(row_id, bad=bad))
            self.sent += 1
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if bad:
                self.bad.add(row_id)
            elif status == 200:
                self.acked.add(row_id)
            if self.table == "events" and number % MALFORMED_EVERY == 0:
                self.malformed += 1
                status = self.post(connection, statement + "(%d,'unterminated'" % self.next_id)
                self.statuses[status] = self.statuses.get(status, 0) + 1
            pause = started + number / self.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        if connection[0] is not None:
            connection[0].close()


# --- the run --------------------------------------------------------------------------------------------------------

def promtool_checks(promtool, rules, config_path, work):
    # The unit tests beside the example rules, pointed at the rule file under test.
    with open(os.path.join(REPO, "examples/prometheus/alerts_test.yml")) as handle:
        tests = handle.read()
    tests_path = os.path.join(work, "alerts_test.yml")
    with open(tests_path, "w") as handle:
        handle.write(re.sub(r"(?m)^rule_files:\n  - alerts\.yml$", "rule_files:\n  - %s" % json.dumps(rules), tests))
    for argv in ([promtool, "check", "rules", rules], [promtool, "check", "config", config_path],
                 [promtool, "check", "config", os.path.join(REPO, "examples/prometheus/prometheus.yml")],
                 [promtool, "test", "rules", tests_path]):
        result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            fail("%s: exit %d\n%s" % (" ".join(argv), result.returncode, result.stdout.strip()))
            return False
        say(" ".join(shown(a) for a in argv[1:]) + ": ok")
    return True


def write_proxy_config(path, work, clickhouse_url, port):
    rules = "\n".join("  %s.%s: %s" % (DATABASE, table, rule) for table, (rule, _, _) in TABLES.items())
    with open(path, "w") as handle:
        handle.write("""listen: 127.0.0.1:%d
upstream:
  servers: [%s]
  connect_timeout: 1s
  timeout: 10s
defaults:
  strategy: hybrid
  max_rows: 1000
  max_delay: 1s
  retries: 2
  retry_backoff: 100ms
tables:
%s
limits:
  max_buffer_memory: 64MiB
spool:
  dir: %s
  max_size: 256MiB
dead_letter_dir: %s
""" % (port, clickhouse_url, rules, os.path.join(work, "spool"), os.path.join(work, "dead-letter")))


def write_prometheus_config(path, rules, proxy_port):
    with open(path, "w") as handle:
        handle.write("""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %s
scrape_configs:
  - job_name: batchhouse
    metrics_path: /metrics
    static_configs:
      - targets: ["127.0.0.1:%d"]
""" % (json.dumps(rules), proxy_port))


def check_panels(prometheus, dashboard, start, end):
    """Every dashboard query returns at least one series with a value over the load; returns the results."""
    results = []
    empty = []
    for panel, target in dashboard_targets(dashboard):
        expr = substitute(target["expr"])
        try:
            series = prometheus.query_range(expr, start, end)
        except RuntimeError as error:
            fail("panel %r query %r: %s" % (panel.get("title"), target["expr"], error))
            continue
        with_values = [s for s in series if any(math.isfinite(float(v)) for _, v in s["values"])]
        results.append((panel, target, series))
        if not with_values:
            empty.append("%r %s: %s" % (panel.get("title"), target.get("refId"), target["expr"]))
    if empty:
        fail("dashboard queries without a series (or only NaN) over the load window:\n    " + "\n    ".join(empty))
    return results


def check_rows(clickhouse, loaders):
    summary = []
    for loader in loaders:
        text = clickhouse.query("SELECT id FROM %s.%s FORMAT TSV" % (DATABASE, loader.table))
        ids = [int(line) for line in text.splitlines() if line]
        present = set(ids)
        missing = loader.acked - present
        landed_bad = loader.bad & present
        duplicates = len(ids) - len(present)
        summary.append("%s: %d acknowledged, %d distinct ids landed, %d missing, %d duplicated, %d bad rows sent, "
                       "%d landed" % (loader.table, len(loader.acked), len(present), len(missing), duplicates,
                                      len(loader.bad), len(landed_bad)))
        if not loader.acked:
            fail("%s: no INSERT acknowledged" % loader.table)
        if missing:
            fail("%s: %d acknowledged ids not in ClickHouse, e.g. %s" % (loader.table, len(missing),
                                                                           sorted(missing)[:5]))
        if landed_bad:
            fail("%s: rows ClickHouse should have refused landed: %s" % (loader.table, sorted(landed_bad)))
        if duplicates:
            fail("%s: %d ids landed more than once" % (loader.table, duplicates))
    return summary


def wait_for_alert(prometheus, proxy_port, stopped_at, timeout):
    """Polls /api/v1/alerts until ALERT fires; returns {event: seconds after ClickHouse stopped}."""
    seen = {}
    deadline = stopped_at + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        if "proxy saw it down" not in seen:
            answer = http_get(proxy_port, "/metrics", timeout=2)
            if answer and re.search(r"^batchhouse_upstream_up\{[^}]*\} 0(\.0)?$", answer[1].decode(errors="replace"),
                                    re.M):
                seen["proxy saw it down"] = now - stopped_at
        try:
            alerts = prometheus.api("alerts")["alerts"]
        except RuntimeError as error:
            say("alerts:", error)
            alerts = []
        states = {a["state"] for a in alerts if a["labels"].get("alertname") == ALERT}
        if "pending" in states and "pending" not in seen:
            seen["pending"] = now - stopped_at
        if "firing" in states:
            seen["firing"] = now - stopped_at
            return seen
        time.sleep(0.5)
    return seen


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--render", metavar="PATH.png", help="draw the dashboard's panels into this PNG")
    parser.add_argument("--load-seconds", type=float, default=20)
    parser.add_argument("--firing-timeout", type=float, default=120)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, configs, spool)")
    args = parser.parse_args()

    began = time.monotonic()
    binary = os.path.abspath(os.environ.get("BATCHHOUSE_BIN") or os.path.join(REPO, ".build/debug/batchhouse"))
    dashboard_path = os.path.abspath(os.environ.get("MONITORING_DASHBOARD")
                                     or os.path.join(REPO, "examples/grafana/batchhouse.json"))
    rules_path = os.path.abspath(os.environ.get("MONITORING_RULES")
                                 or os.path.join(REPO, "examples/prometheus/alerts.yml"))
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    prometheus_binary = os.environ.get("PROMETHEUS") or shutil.which("prometheus")
    for what, path in (("batchhouse binary", binary), ("promtool", promtool), ("prometheus", prometheus_binary)):
        if not path or not os.access(path, os.X_OK):
            say("%s not found (%s); scripts/monitoring-check installs Debian's prometheus package" % (what, path))
            return 1
    say("binary %s; dashboard %s; rules %s" % (binary, shown(dashboard_path), shown(rules_path)))
    with open(dashboard_path) as handle:
        try:
            dashboard = json.load(handle)
        except ValueError as error:
            say("FAIL: %s is not JSON: %s" % (dashboard_path, error))
            return 1

    # A TERM (scripts/test interrupted, a timeout) still stops what was started: the finally block below runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="bh-monitoring-check.")
    started = Started(say)
    timings = {}
    summary = []
    try:
        proxy_port, prometheus_port = free_port(), free_port()
        while prometheus_port == proxy_port:
            prometheus_port = free_port()
        prometheus_config = os.path.join(work, "prometheus.yml")
        write_prometheus_config(prometheus_config, rules_path, proxy_port)
        if not promtool_checks(promtool, rules_path, prometheus_config, work):
            raise Aborted()
        alerts = rule_alerts(rules_path)

        step = time.monotonic()
        assignments = start_clickhouse(started, work)
        clickhouse = ClickHouse(assignments["CLICKHOUSE_URL"])
        clickhouse.query("CREATE DATABASE IF NOT EXISTS %s" % DATABASE)
        for table in TABLES:
            clickhouse.query("CREATE TABLE %s.%s (id UInt64, payload String, d Date) ENGINE = MergeTree "
                             "ORDER BY id" % (DATABASE, table))
        timings["ClickHouse start"] = time.monotonic() - step

        step = time.monotonic()
        proxy_config = os.path.join(work, "batchhouse.yaml")
        write_proxy_config(proxy_config, work, assignments["CLICKHOUSE_URL"], proxy_port)
        proxy = started.popen("batchhouse", [binary, "--config", proxy_config], os.path.join(work, "batchhouse.log"),
                              term_timeout=15)
        if not wait_until(lambda: proxy.poll() is None and http_get(proxy_port, "/ping", 1), 30):
            raise RuntimeError("the proxy did not answer /ping (log: %s)" % os.path.join(work, "batchhouse.log"))
        started.popen("prometheus", [prometheus_binary, "--config.file=" + prometheus_config,
                                     "--storage.tsdb.path=" + os.path.join(work, "tsdb"),
                                     "--web.listen-address=127.0.0.1:%d" % prometheus_port,
                                     "--storage.tsdb.retention.time=1h"],
                      os.path.join(work, "prometheus.log"), term_timeout=10)
        prometheus = Prometheus(prometheus_port)
        if not wait_until(lambda: (http_get(prometheus_port, "/-/ready", 1) or (0,))[0] == 200, 30):
            raise RuntimeError("Prometheus not ready (log: %s)" % os.path.join(work, "prometheus.log"))
        scraped = wait_until(lambda: prometheus.query('up{job="batchhouse"} == 1'), 15)
        if not scraped:
            fail('Prometheus did not scrape the proxy: up{job="batchhouse"} is not 1 (%s)'
                 % prometheus.query('up{job="batchhouse"}'))
        timings["proxy and Prometheus start"] = time.monotonic() - step

        # The load.
        load_start_wall = time.time()
        step = time.monotonic()
        stop_at = step + args.load_seconds
        loaders = [Loader(proxy_port, table, rate, first_id, stop_at)
                   for table, (_, rate, first_id) in TABLES.items()]
        for loader in loaders:
            loader.start()
        for loader in loaders:
            loader.join()
        timings["load"] = time.monotonic() - step
        sent = sum(loader.sent + loader.malformed for loader in loaders)
        statuses = {}
        for loader in loaders:
            for status, count in loader.statuses.items():
                statuses[status] = statuses.get(status, 0) + count
        summary.append("load: %d requests in %.1f s (%.0f/s), statuses %s" % (
            sent, timings["load"], sent / timings["load"],
            ", ".join("%s: %d" % (status or "no answer", count) for status, count in sorted(statuses.items()))))

        # Drain: every acknowledged row in ClickHouse and nothing buffered, then two more scrapes.
        step = time.monotonic()

        def drained():
            health = http_get(proxy_port, "/health", 2)
            if not health or json.loads(health[1]).get("buffered_rows", 1) != 0:
                return False
            return all(int(clickhouse.query("SELECT count() FROM %s.%s WHERE id IN (%s)" % (
                DATABASE, loader.table, ",".join(str(i) for i in sorted(loader.acked)) or "0")).strip())
                >= len(loader.acked) for loader in loaders)

        if not wait_until(drained, 30, interval=0.5):
            say("not drained within 30 s; checking what landed anyway")
        time.sleep(2.5)
        timings["drain"] = time.monotonic() - step
        load_end_wall = time.time()

        # Checks.
        step = time.monotonic()
        summary.extend(check_rows(clickhouse, loaders))

        up = prometheus.query('up{job="batchhouse"}')
        if not up or up[0]["value"][1] != "1":
            fail('up{job="batchhouse"} is %s, not 1' % up)

        loaded = {}
        for group in prometheus.api("rules")["groups"]:
            for rule in group["rules"]:
                if rule.get("type") == "alerting":
                    loaded[rule["name"]] = rule
        not_loaded = [a["name"] for a in alerts if a["name"] not in loaded]
        if not alerts:
            fail("no alert found in %s" % rules_path)
        if not_loaded:
            fail("alerts of %s not loaded by Prometheus: %s" % (rules_path, ", ".join(not_loaded)))
        broken = ["%s: %s" % (name, rule.get("lastError")) for name, rule in loaded.items()
                  if rule.get("health") == "err"]
        if broken:
            fail("alert rules that fail to evaluate:\n    " + "\n    ".join(broken))
        summary.append("rules: %d alerts in the file, %d loaded, %d with evaluation errors" % (
            len(alerts), len(loaded), len(broken)))

        answer = http_get(proxy_port, "/metrics")
        metrics_text = answer[1].decode(errors="replace") if answer else ""
        with open(os.path.join(work, "metrics.txt"), "w") as handle:
            handle.write(metrics_text)
        types, labels = exported_types(metrics_text), exported_labels(metrics_text)
        for source, expressions in (("dashboard", [t["expr"] for _, t in dashboard_targets(dashboard)]),
                                    ("rules", [a["expr"] for a in alerts])):
            names = sorted({name for expr in expressions for name in metric_names(expr)})
            missing = missing_metrics(names, types)
            if missing:
                fail("metrics the %s uses that the proxy does not export (no `# TYPE` line in /metrics): %s"
                     % (source, ", ".join(missing)))
            unlabelled = ["%s: %s" % (expr.strip(), ", ".join(missing)) for expr in expressions
                          for missing in [missing_labels(expr, labels)] if missing]
            if unlabelled:
                fail("%s expressions use labels that their metrics lack in /metrics:\n    %s"
                     % (source, "\n    ".join(unlabelled)))
            summary.append("%s: %d metric names referenced, %d missing from /metrics, %d expressions with a "
                           "label their metrics lack" % (source, len(names), len(missing), len(unlabelled)))

        panel_results = check_panels(prometheus, dashboard, load_start_wall, load_end_wall)
        series_counts = [len(series) for _, _, series in panel_results]
        summary.append("dashboard: %d panels, %d queries, %d series over the load (%d queries empty)" % (
            len({id(p) for p, _, _ in panel_results}), len(panel_results), sum(series_counts),
            sum(1 for _, _, s in panel_results
                if not any(math.isfinite(float(v)) for x in s for _, v in x["values"]))))
        timings["checks"] = time.monotonic() - step

        if args.render:
            step = time.monotonic()
            import render  # noqa: E402 (matplotlib only when asked)
            render.render(dashboard, prometheus, substitute, load_start_wall, load_end_wall, args.render)
            timings["render"] = time.monotonic() - step
            summary.append("render: %s" % args.render)

        # ClickHouse goes away: BatchhouseUpstreamDown must go pending, then fire.
        step = time.monotonic()
        started.stop_clickhouse()
        summary.append("ClickHouse stopped (scripts/clickhouse-stop) in %.1f s" % (time.monotonic() - step))
        seen = wait_for_alert(prometheus, proxy_port, step, args.firing_timeout)
        timings["until %s fired" % ALERT] = time.monotonic() - step
        events = ", ".join("%s after %.1f s" % (event, seconds) for event, seconds in seen.items())
        summary.append("from the stop: %s" % (events or "nothing seen"))
        if "firing" not in seen:
            fail("%s did not fire within %.0f s of stopping ClickHouse (%s)" % (ALERT, args.firing_timeout,
                                                                            events or "never pending"))
        elif "pending" not in seen:
            fail("%s fired without being seen pending first (its `for:` did not hold)" % ALERT)
    except Aborted:
        pass
    except Exception as error:  # noqa: BLE001: report, stop everything, fail
        fail("%s: %s" % (type(error).__name__, error))
    finally:
        step = time.monotonic()
        started.stop_all()
        timings["teardown"] = time.monotonic() - step
        if args.keep or failures:
            say("work folder kept: %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print("monitoring check summary:")
    for line in summary:
        print("  " + line)
    print("  timings: " + ", ".join("%s %.1f s" % item for item in timings.items())
          + "; total %.1f s" % (time.monotonic() - began))
    if failures:
        print("monitoring check: %d check(s) failed" % len(failures))
        for message in failures:
            print("  - " + message.splitlines()[0])
        return 1
    print("monitoring check: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
