"""Shared pieces of scripts/client-matrix and scripts/http-cases: the proxy process, a stdlib ClickHouse HTTP
client for set-up and read-back, free ports. Everything on 127.0.0.1; every process started here is stopped by
its PID (Proxy.stop), also when the caller fails."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse


def log(tool, *parts):
    print("%s:" % tool, *parts, file=sys.stderr, flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class HTTP:
    """A tiny ClickHouse HTTP client (stdlib only): the oracle's and the set-up's view, never a client under test."""

    def __init__(self, url):
        parsed = urllib.parse.urlparse(url)
        self.url = url.rstrip("/")
        self.host = parsed.hostname
        self.port = parsed.port or 8123

    def request(self, method="POST", path="/", body=None, headers=None, timeout=60):
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            connection.close()

    def query(self, sql, params=None, timeout=60):
        path = "/" + ("?" + urllib.parse.urlencode(params) if params else "")
        status, _, data = self.request("POST", path, body=sql.encode(), timeout=timeout)
        if status != 200:
            raise RuntimeError("%d for %r: %s" % (status, sql[:120], data[:400].decode(errors="replace")))
        return data.decode()

    def json_rows(self, sql):
        text = self.query(sql + " FORMAT JSONEachRow")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def active_parts(self, database, table):
        return int(self.query("SELECT count() FROM system.parts WHERE database = '%s' AND table = '%s' AND active"
                              % (database, table)).strip())

    def version(self):
        return self.query("SELECT version()").strip()


class Proxy:
    """The batchhouse binary with a YAML file written here, on a loopback port of its own."""

    def __init__(self, binary, work_dir, name, upstream_url, yaml_body):
        self.binary = binary
        self.name = name
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.config_path = os.path.join(work_dir, "%s.yaml" % name)
        self.log_path = os.path.join(work_dir, "%s.log" % name)
        self.dead_letter = os.path.join(work_dir, "%s-dead-letter" % name)
        with open(self.config_path, "w") as handle:
            handle.write("listen: 127.0.0.1:%d\n" % self.port)
            handle.write("upstream: { servers: [%s] }\n" % upstream_url)
            handle.write("dead_letter_dir: %s\n" % self.dead_letter)
            handle.write(yaml_body)
        self.process = None

    def start(self, timeout=30):
        log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen([self.binary, "--config", self.config_path], stdin=subprocess.DEVNULL,
                                        stdout=log_file, stderr=subprocess.STDOUT, restore_signals=True)
        log_file.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("proxy %s exited at start (log %s):\n%s" % (self.name, self.log_path, self.tail()))
            try:
                if HTTP(self.url).request("GET", "/ping", timeout=1)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("proxy %s did not answer /ping within %ds (log %s)" % (self.name, timeout, self.log_path))

    def tail(self, lines=20):
        try:
            with open(self.log_path, errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return ""

    def health(self):
        try:
            status, _, data = HTTP(self.url).request("GET", "/health", timeout=5)
            return json.loads(data)
        except (OSError, ValueError):
            return None

    def drain(self, timeout=30):
        """Waits until the proxy holds no buffered rows (twice in a row)."""
        deadline = time.monotonic() + timeout
        calm = 0
        while time.monotonic() < deadline:
            health = self.health()
            if health and not health.get("buffered_rows") and not health.get("buffered_bytes"):
                calm += 1
                if calm >= 2:
                    return True
            else:
                calm = 0
            time.sleep(0.2)
        return False

    def stop(self, timeout=30):
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
