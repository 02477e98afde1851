"""Runs the Batchhouse binary for a scenario: start (with or without a crash point armed), wait, signal, read
/health and /metrics. Always on 127.0.0.1 and a fixed port per scenario, so clients reconnect to a restarted
proxy where they left off."""

import http.client
import json
import os
import signal
import subprocess
import time


class Proxy:
    def __init__(self, binary, config_path, port, log_dir, name):
        self.binary = binary
        self.config_path = config_path
        self.port = port
        self.log_dir = log_dir
        self.name = name
        self.process = None
        self.runs = 0
        self.log_paths = []

    def start(self, crash_at=None, ready_timeout=30):
        """Starts the binary (`crash_at`: BATCHHOUSE_CRASH_AT); returns once it answers HTTP, or False."""
        self.runs += 1
        log_path = os.path.join(self.log_dir, "%s-proxy-run%d.log" % (self.name, self.runs))
        self.log_paths.append(log_path)
        environment = dict(os.environ)
        environment.pop("BATCHHOUSE_CRASH_AT", None)
        if crash_at:
            environment["BATCHHOUSE_CRASH_AT"] = crash_at
        log_file = open(log_path, "wb")
        self.process = subprocess.Popen(
            [self.binary, "--config", self.config_path, "--listen", "127.0.0.1:%d" % self.port],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=environment,
            # Default signal dispositions, whatever the caller blocked.
            restore_signals=True,
        )
        log_file.close()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self.request("GET", "/ping", timeout=1) is not None:
                return True
            time.sleep(0.1)
        return False

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def wait_exit(self, timeout):
        """The exit status (negative: the signal), or None if still running after `timeout`."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.alive():
            os.kill(self.process.pid, signal.SIGKILL)
        return self.process.wait(10) if self.process else None

    def stop(self, timeout=40):
        """SIGTERM (a graceful stop flushes what it can), SIGKILL after `timeout`; returns the exit status."""
        if not self.alive():
            return self.process.returncode if self.process else None
        os.kill(self.process.pid, signal.SIGTERM)
        status = self.wait_exit(timeout)
        if status is None:
            os.kill(self.process.pid, signal.SIGKILL)
            status = self.process.wait(10)
        return status

    def request(self, method, path, body=None, timeout=5):
        """(status, headers, body bytes), or None without an answer."""
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            connection.request(method, path, body=body)
            response = connection.getresponse()
            data = response.read()
            headers = {name.lower(): value for name, value in response.getheaders()}
            connection.close()
            return response.status, headers, data
        except (OSError, http.client.HTTPException):
            return None

    def health(self):
        answer = self.request("GET", "/health")
        if answer is None:
            return None
        try:
            return json.loads(answer[2])
        except ValueError:
            return None

    def metrics(self):
        """{name: value} of the Prometheus text, labels summed away."""
        answer = self.request("GET", "/metrics")
        values = {}
        if answer is None or answer[0] != 200:
            return values
        for line in answer[2].decode(errors="replace").splitlines():
            if not line or line.startswith("#"):
                continue
            try:
                name_part, value = line.rsplit(" ", 1)
                name = name_part.split("{", 1)[0]
                values[name] = values.get(name, 0.0) + float(value)
            except ValueError:
                continue
        return values

    def logs(self):
        text = ""
        for path in self.log_paths:
            try:
                with open(path, errors="replace") as handle:
                    text += handle.read()
            except OSError:
                pass
        return text
