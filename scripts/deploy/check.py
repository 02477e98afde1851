#!/usr/bin/env python3
"""Checks the deployment files against each other, the binary and the README (docs/testing.md, "Deployment files").

No Docker engine or Kubernetes runs where this project is tested, so nothing here builds the image or starts the
compose file; what can be checked without them is:

  systemd     examples/systemd/batchhouse.service: `systemd-analyze verify` on the real unit in a scratch root that
              holds the release binary at /usr/local/bin/batchhouse, `systemd-analyze security --offline`, the
              settings the README promises, and the strategy file it runs (check-config, spool and dead letters in
              its StateDirectory).
  dockerfile  the build stage's `swift build` is README's; the runtime stage's apt-get line names every Debian
              package the binary links that debian:bookworm-slim lacks, and nothing else but ca-certificates.
  kubernetes  examples/kubernetes/*.yaml: probes, ports, mounts, the ConfigMap's strategy file (check-config),
              the spool volume, resources, grace period, annotations, the user id.
  compose     examples/docker-compose.yml: services, every mounted file exists, the Batchhouse config passes
              check-config, Prometheus and Grafana provisioning agree with the mounts and the dashboard's
              datasource references.
  smoke       the release binary with a scratch config: /ping, /health, /metrics, the compose health check
              command, SIGHUP reloads, SIGTERM exits 0.

Usage: check.py --binary PATH [--only SECTION ...]. Exit status 1 when any check failed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
UNIT = EXAMPLES / "systemd" / "batchhouse.service"
DOCKERFILE = REPO / "Dockerfile"
README = REPO / "README.md"
SIDECAR = EXAMPLES / "kubernetes" / "batchhouse-sidecar.yaml"
PVC = EXAMPLES / "kubernetes" / "pvc.yaml"
COMPOSE = EXAMPLES / "docker-compose.yml"

# How long the proxy's HTTP server waits for busy connections on a graceful stop (HTTPServer.drainTimeout).
CONNECTION_DRAIN_SECONDS = 30
# Built-in defaults of the keys the checks read (BatchhouseConfig/Configuration.swift).
DEFAULT_UPSTREAM_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS = 4096
DEFAULT_MAX_BUFFER_MEMORY = 512 << 20

# Binary packages of debian:bookworm-slim, from docker-library/repo-info, repos/debian/local/bookworm-slim.md (image
# of 2026-09-18). libstdc++6 and libgcc-s1 are in it (apt needs them), so are zlib1g, liblz4-1, libzstd1 and liblzma5
# (dpkg, apt and systemd's libraries need them); libcurl4 and libbrotli1 are not.
BOOKWORM_SLIM = set("""
adduser apt base-files base-passwd bash bsdutils coreutils dash debconf debian-archive-keyring debianutils
diffutils dpkg e2fsprogs findutils gcc-12-base gpgv grep gzip hostname init-system-helpers libacl1 libapt-pkg6.0
libattr1 libaudit-common libaudit1 libblkid1 libbz2-1.0 libc-bin libc6 libcap-ng0 libcap2 libcom-err2 libcrypt1
libdb5.3 libdebconfclient0 libext2fs2 libffi8 libgcc-s1 libgcrypt20 libgmp10 libgnutls30 libgpg-error0 libhogweed6
libidn2-0 liblz4-1 liblzma5 libmd0 libmount1 libnettle8 libp11-kit0 libpam-modules libpam-modules-bin
libpam-runtime libpam0g libpcre2-8-0 libseccomp2 libselinux1 libsemanage-common libsemanage2 libsepol2
libsmartcols1 libss2 libstdc++6 libsystemd0 libtasn1-6 libtinfo6 libudev1 libunistring2 libuuid1 libxxhash0
libzstd1 login logsave mawk mount ncurses-base ncurses-bin passwd perl-base sed sysvinit-utils tar tzdata
usr-is-merged util-linux util-linux-extra zlib1g
""".split())
# Packages the runtime stage may name without the binary linking them, and why.
RUNTIME_EXTRAS = {"ca-certificates": "libcurl's trust store for https:// upstreams (data, not a library)"}

failures: list[str] = []


def say(section: str, message: str) -> None:
    print(f"deploy-check: {section}: {message}", flush=True)


def ok(section: str, message: str) -> None:
    say(section, "ok: " + message)


def fail(section: str, message: str) -> None:
    failures.append(f"{section}: {message}")
    say(section, "FAIL: " + message)


def expect(condition: bool, section: str, message: str, detail: str = "") -> bool:
    if condition:
        ok(section, message)
    else:
        fail(section, message + (f" ({detail})" if detail else ""))
    return condition


def show(command: list[str], completed: subprocess.CompletedProcess) -> None:
    print("$ " + " ".join(shlex.quote(part) for part in command), flush=True)
    output = (completed.stdout or "") + (completed.stderr or "")
    for line in output.rstrip("\n").splitlines():
        print("  " + line)
    print(f"  (exit status {completed.returncode})", flush=True)


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------------- values


def duration_seconds(text) -> float:
    """A strategy-file duration (`250ms`, `1m30s`; BatchhouseConfig/ValueSyntax.swift) or a compose one (`1m30s`)."""
    text = str(text).strip()
    if text == "0":
        return 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)", text.lower())
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s", "", text.lower()):
        raise ValueError(f"not a duration: {text!r}")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def size_bytes(text) -> int:
    """A strategy-file size (`16MiB`, `1GB`, plain bytes)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not match:
        raise ValueError(f"not a size: {text!r}")
    units = {"": 1, "b": 1, "k": 1 << 10, "ki": 1 << 10, "kib": 1 << 10, "kb": 10**3, "m": 1 << 20, "mi": 1 << 20,
             "mib": 1 << 20, "mb": 10**6, "g": 1 << 30, "gi": 1 << 30, "gib": 1 << 30, "gb": 10**9,
             "t": 1 << 40, "ti": 1 << 40, "tib": 1 << 40, "tb": 10**12}
    return int(float(match.group(1)) * units[match.group(2).lower()])


def quantity_bytes(text) -> int:
    """A Kubernetes quantity (`512Mi`, `2Gi`, `1G`)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|k|M|G|T|)\s*", str(text))
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    units = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6, "G": 10**9,
             "T": 10**12}
    return int(float(match.group(1)) * units[match.group(2)])


def mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


class StrategyFile:
    """The keys of a Batchhouse strategy file the deployment files depend on."""

    def __init__(self, text: str, origin: str):
        self.origin = origin
        self.data = yaml.safe_load(text) or {}
        upstream = self.data.get("upstream") or {}
        limits = self.data.get("limits") or {}
        spool = self.data.get("spool")
        self.listen = str(self.data.get("listen", "0.0.0.0:8123"))
        self.servers = upstream.get("servers") or ["http://127.0.0.1:8124"]
        if isinstance(self.servers, str):
            self.servers = [self.servers]
        self.upstream_timeout = duration_seconds(upstream.get("timeout", f"{DEFAULT_UPSTREAM_TIMEOUT:g}s"))
        self.max_connections = int(limits.get("max_connections", DEFAULT_MAX_CONNECTIONS))
        self.max_buffer_memory = size_bytes(limits.get("max_buffer_memory", DEFAULT_MAX_BUFFER_MEMORY))
        self.spool_dir = str(spool["dir"]) if spool else None
        self.spool_max_size = size_bytes(spool["max_size"]) if spool and "max_size" in spool else None
        default_dead = (self.spool_dir.rstrip("/") + "/dead-letter") if self.spool_dir else "./batchhouse-dead-letter"
        self.dead_letter_dir = str(self.data.get("dead_letter_dir", default_dead))

    @property
    def listen_port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def listen_host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]") or "0.0.0.0"

    @property
    def stop_budget(self) -> float:
        """A graceful stop: the connection drain, then the last batches: two upstream.timeout (one attempt that
        times out and its retry)."""
        return CONNECTION_DRAIN_SECONDS + 2 * self.upstream_timeout


def under(path: str, folder: str) -> bool:
    path, folder = os.path.normpath(path), os.path.normpath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def check_config(binary: Path, section: str, path: Path, label: str) -> bool:
    command = [str(binary), "check-config", str(path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if completed.returncode != 0:
        show(command, completed)
    return expect(completed.returncode == 0, section, f"{label} passes `batchhouse check-config`",
                  (completed.stderr or completed.stdout).strip())


# ---------------------------------------------------------------------------------------------------- systemd


def parse_unit(text: str) -> dict[tuple[str, str], list[str]]:
    """[Section] Key=Value lines; a key may repeat (SystemCallFilter=)."""
    settings: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


def check_systemd(binary: Path) -> None:
    section = "systemd"
    text = UNIT.read_text()
    unit = parse_unit(text)

    def one(key: str, where: str = "Service") -> str | None:
        values = unit.get((where, key))
        return values[-1] if values else None

    exec_start = one("ExecStart") or ""
    expect(exec_start == "/usr/local/bin/batchhouse --config /etc/batchhouse/batchhouse.yaml", section,
           "ExecStart runs /usr/local/bin/batchhouse --config /etc/batchhouse/batchhouse.yaml", exec_start)
    user, dynamic = one("User"), (one("DynamicUser") or "no")
    expect((user not in (None, "", "root", "0")) or dynamic in ("yes", "true", "1"), section,
           f"runs as a non-root user (User={user}, DynamicUser={dynamic})")
    expect(one("ExecReload") == "/bin/kill -HUP $MAINPID", section,
           "ExecReload sends SIGHUP (the proxy reloads its file)",
           str(one("ExecReload")))
    expect(one("Restart") == "on-failure", section, "Restart=on-failure", str(one("Restart")))
    expect(one("KillSignal") in (None, "SIGTERM", "TERM", "15"), section, "stops with SIGTERM (a graceful drain)",
           str(one("KillSignal")))
    for key, wanted in [("NoNewPrivileges", {"yes", "true"}), ("ProtectSystem", {"strict"}),
                        ("ProtectHome", {"yes", "true", "read-only", "tmpfs"}), ("PrivateTmp", {"yes", "true"})]:
        expect(one(key) in wanted, section, f"{key}={one(key)}")
    state = one("StateDirectory")
    expect(state == "batchhouse", section, "StateDirectory=batchhouse (/var/lib/batchhouse)", str(state))
    state_path = "/var/lib/" + (state or "batchhouse")
    limit_nofile = one("LimitNOFILE")

    # The strategy file the unit runs: the one its install lines put at the path ExecStart names.
    config_path = exec_start.split("--config", 1)[1].strip().split()[0] if "--config" in exec_start else ""
    source = None
    for line in text.splitlines():
        words = line.lstrip("# ").split(" #")[0].split()
        if words[:1] == ["install"] and words[-1:] == [config_path] and len(words) >= 3:
            source = REPO / words[-2]
    if not expect(source is not None and source.is_file(), section,
                  f"the unit's install lines put a strategy file of the repository at {config_path}",
                  str(source)):
        return
    ok(section, f"the unit runs {rel(source)}")
    check_config(binary, section, source, rel(source))
    config = StrategyFile(source.read_text(), rel(source))
    expect(config.spool_dir is not None and under(config.spool_dir, state_path), section,
           f"spool.dir ({config.spool_dir}) is in the StateDirectory {state_path}")
    expect(under(config.dead_letter_dir, state_path), section,
           f"the dead letters ({config.dead_letter_dir}) are in the StateDirectory {state_path}")
    written = [p for p in [config.spool_dir, config.dead_letter_dir] if p]
    read_write = " ".join(unit.get(("Service", "ReadWritePaths"), [])).split()
    if read_write:
        expect(not all(under(p, state_path) for p in written), section,
               "ReadWritePaths= is needed (something the proxy writes is outside the StateDirectory)",
               f"ReadWritePaths={' '.join(read_write)} while {', '.join(written)} are in {state_path}")
    else:
        expect(all(under(p, state_path) for p in written), section,
               "no ReadWritePaths= needed: all the proxy writes is in the StateDirectory")
    stop = one("TimeoutStopSec") or one("TimeoutSec") or "90s"
    systemd_units = stop.replace("min", "m").replace("sec", "s").replace(" ", "")
    stop_seconds = duration_seconds(systemd_units if re.search(r"[a-z]", systemd_units) else systemd_units + "s")
    expect(stop_seconds >= config.stop_budget, section,
           f"TimeoutStopSec={stop} covers the drain: {CONNECTION_DRAIN_SECONDS} s of connections + 2 x "
           f"upstream.timeout ({config.upstream_timeout:g} s) = {config.stop_budget:g} s")
    expect(limit_nofile is not None and limit_nofile.split(":")[0].isdigit()
           and int(limit_nofile.split(":")[0]) > config.max_connections, section,
           f"LimitNOFILE={limit_nofile} is above limits.max_connections ({config.max_connections})")

    if shutil.which("systemd-analyze") is None:
        fail(section, "systemd-analyze is missing (Debian package systemd; scripts/deploy-check installs it as root)")
        return
    # `verify` wants every Exec*= command to exist; --root makes it look for them, and for the units the service
    # depends on, in a scratch tree instead of the machine (which need not run systemd, or have Batchhouse installed).
    with tempfile.TemporaryDirectory(prefix="bh-deploy-root.") as scratch:
        root = Path(scratch)
        for folder in ["etc/systemd/system", "usr/local/bin", "usr/bin", "usr/lib/systemd"]:
            (root / folder).mkdir(parents=True, exist_ok=True)
        for link in ["bin", "sbin", "lib"]:
            (root / link).symlink_to("usr/" + link if link != "sbin" else "usr/bin")
        shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
        shutil.copy2(binary, root / "usr/local/bin/batchhouse")
        shutil.copy2(shutil.which("kill") or "/usr/bin/kill", root / "usr/bin/kill")
        shutil.copy2(UNIT, root / "etc/systemd/system/batchhouse.service")
        command = ["systemd-analyze", "verify", f"--root={root}", "batchhouse.service"]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=60)
        show(command, completed)
        output = (completed.stdout + completed.stderr).strip()
        expect(completed.returncode == 0 and not output, section,
               "systemd-analyze verify passes without a warning", output.replace("\n", "; "))
        command = ["systemd-analyze", "security", "--offline=yes", f"--root={root}", "batchhouse.service"]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=60)
        overall = [line for line in completed.stdout.splitlines() if "Overall exposure level" in line]
        print("$ " + " ".join(shlex.quote(part) for part in command) + " | grep 'Overall exposure'")
        print("  " + (overall[0].strip() if overall else (completed.stdout + completed.stderr).strip()))
        score = float(re.search(r"(\d+\.\d+)", overall[0]).group(1)) if overall else 99.0
        expect(completed.returncode == 0 and score <= 2.0, section,
               f"systemd-analyze security rates the exposure {score:g} (at most 2.0 wanted)")


# ---------------------------------------------------------------------------------------------------- Dockerfile


def dockerfile_stages(text: str) -> list[dict]:
    """Each FROM with its RUN commands (continuation lines joined), split at `&&` and `;`."""
    joined = re.sub(r"\\\n", " ", text)
    stages: list[dict] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append({"from": rest.strip(), "run": [], "lines": []})
        elif stages:
            stages[-1]["lines"].append((instruction, rest.strip()))
            if instruction == "RUN":
                stages[-1]["run"] += [part.strip() for part in re.split(r"&&|;", rest) if part.strip()]
    return stages


def swift_build_flags(command: str) -> list[str]:
    words = shlex.split(command)
    return words[2:] if words[:2] == ["swift", "build"] else []


def readme_section(title: str) -> str:
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.S | re.M)
    return match.group(1) if match else ""


def readme_build_commands(section_text: str) -> list[list[str]]:
    commands = []
    for block in re.findall(r"```(?:sh|bash|console)?\n(.*?)```", section_text, re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("swift build ") and "--show-bin-path" not in line:
                commands.append(swift_build_flags(line))
    return commands


def candidates(path: str) -> list[str]:
    """A library's path as given and resolved, each with and without /usr (Debian 12 merged /lib into /usr/lib;
    dpkg records whichever path the package ships)."""
    found = []
    for p in [path, os.path.realpath(path)]:
        found += [p, p[4:] if p.startswith("/usr/") else "/usr" + p]
    return list(dict.fromkeys(found))


def debian_packages(paths: list[str]) -> dict[str, str]:
    """The installed package owning each path that one owns, from one `dpkg -S` call."""
    asked = {c: p for p in paths for c in candidates(p)}
    completed = subprocess.run(["dpkg", "-S", *asked], capture_output=True, text=True)
    owners: dict[str, str] = {}
    for line in completed.stdout.splitlines():
        package, _, owned = line.partition(": ")
        if owned in asked:
            owners.setdefault(asked[owned], package.split(",")[0].split(":")[0].strip())
    return owners


def package_depends() -> dict[str, set[str]]:
    """Depends and Pre-Depends of every installed package (each alternative counts), from one dpkg-query call."""
    completed = subprocess.run(["dpkg-query", "-W", "-f=${Package}\t${Depends}, ${Pre-Depends}\n"],
                               capture_output=True, text=True)
    depends: dict[str, set[str]] = {}
    for line in completed.stdout.splitlines():
        package, _, relations = line.partition("\t")
        names = {item.strip().split(" ")[0].split(":")[0] for item in re.split(r"[,|]", relations)}
        depends.setdefault(package, set()).update(n for n in names if n)
    return depends


def closure(packages: set[str]) -> set[str]:
    depends = package_depends()
    seen, todo = set(), list(packages)
    while todo:
        package = todo.pop()
        if package not in seen:
            seen.add(package)
            todo += depends.get(package, set()) - seen
    return seen


def system_libraries() -> dict[str, str]:
    """`-l<name>` -> the 64-bit shared library the dynamic linker's cache has for it."""
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"   # in /sbin, off a non-root PATH
    completed = subprocess.run([ldconfig, "-p"], capture_output=True, text=True)
    found: dict[str, str] = {}
    for line in completed.stdout.splitlines():
        match = re.match(r"\s*lib(\S+?)\.so[.\d]* \(([^)]*)\) => (.*)", line)
        if match and "64" in match.group(2):
            found.setdefault(match.group(1), match.group(3).strip())
    return found


def check_dockerfile(binary: Path) -> None:
    section = "dockerfile"
    stages = dockerfile_stages(DOCKERFILE.read_text())
    if not expect(len(stages) >= 2, section, f"the Dockerfile has a build and a runtime stage ({len(stages)} FROM)"):
        return
    build, runtime = stages[0], stages[-1]

    # The build command is README's.
    builds = [swift_build_flags(c) for c in build["run"] if c.startswith("swift build") and "--show-bin-path" not in c]
    if not expect(len(builds) == 1, section, "the build stage runs one `swift build`", str(builds)):
        return
    docker_flags = builds[0]
    deployment_text = readme_section("Deployment")
    deployment = readme_build_commands(deployment_text)
    expect(bool(deployment) and deployment[0] == docker_flags, section,
           f"the build stage's `swift build {' '.join(docker_flags)}` is README's (Deployment)",
           f"README: {['swift build ' + ' '.join(c) for c in deployment] or 'no swift build in ## Deployment'}")
    # README's other release builds of the proxy (Quick start's `swift build -c release`) are the same
    # configuration; the Dockerfile only adds what a binary for another machine needs.
    others = [c for c in readme_build_commands(README.read_text().replace(deployment_text, ""))
              if "release" in c and ("--product" not in c or c[c.index("--product") + 1] == "batchhouse")]
    expect(bool(others) and all(set(c) <= set(docker_flags) for c in others), section,
           "README's other release builds (" + "; ".join("swift build " + " ".join(c) for c in others)
           + ") use no flag the Dockerfile's lacks")
    static = "--static-swift-stdlib" in docker_flags
    expect(static, section, "the image's binary is built with --static-swift-stdlib (no Swift runtime in the "
                            "runtime stage)")
    image_tag = build["from"].split()[0]
    version = subprocess.run(["swift", "--version"], capture_output=True, text=True) if shutil.which("swift") else None
    local = re.search(r"Swift version (\d+\.\d+)", (version.stdout + version.stderr) if version else "")
    say(section, f"note: the build stage uses {image_tag}; this machine's toolchain is "
                 f"{local.group(1) if local else 'unknown'} (the binary compared below comes from it)")

    # The build stage has every package Package.swift's system libraries name.
    build_apt = apt_install_packages(build["run"])
    providers = set(re.findall(r'\.apt\(\[([^\]]*)\]\)', (REPO / "Package.swift").read_text()))
    wanted = {p.strip().strip('"') for group in providers for p in group.split(",")} | {"pkg-config"}
    expect(wanted <= build_apt, section, "the build stage installs the -dev packages Package.swift names, and "
                                         "pkg-config", f"missing: {sorted(wanted - build_apt)}")

    # The runtime stage's packages are the binary's libraries that the slim image lacks.
    named = apt_install_packages(runtime["run"])
    say(section, f"runtime stage installs: {' '.join(sorted(named))}")
    command = ["ldd", str(binary)]
    completed = subprocess.run(command, capture_output=True, text=True)
    show(command, completed)
    if not expect(completed.returncode == 0, section, f"ldd reads {rel(binary)}"):
        return
    resolved: dict[str, str] = {}
    for line in completed.stdout.splitlines():
        match = re.match(r"\s*(\S+) => (\S+)", line)
        if "not found" in line:
            fail(section, f"ldd cannot resolve {line.strip()}")
        elif match:
            resolved[match.group(1)] = match.group(2)
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]",
                        subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True).stdout)
    if not expect(bool(needed), section, f"readelf lists the binary's own NEEDED libraries ({len(needed)})"):
        return

    # Resolved paths: ldd's, and the dynamic loader, which ldd prints without "=>".
    for line in completed.stdout.splitlines():
        match = re.match(r"\s*(/\S*ld-linux\S*) \(", line)
        if match:
            resolved[os.path.basename(match.group(1))] = match.group(1)
    owners = debian_packages(list(resolved.values()))          # path -> package
    package_of = {library: owners.get(path) for library, path in resolved.items()}
    swift_static = None                                          # the toolchain's static Swift runtime, if linked
    for library in needed:
        path = resolved.get(library, "")
        if package_of.get(library) is None and "/lib/swift/" in path:
            swift_static = Path(os.path.dirname(path).replace("/lib/swift/linux", "/lib/swift_static/linux"))
            break

    def static_archive(library: str) -> Path | None:
        return swift_static / (library.split(".so")[0] + ".a") if swift_static else None

    direct: dict[str, str] = {}       # package -> library, for the libraries the binary names itself
    swift_runtime: list[str] = []     # libraries of the Swift toolchain, linked statically with --static-swift-stdlib
    static_links: set[str] = set()    # -l flags those static archives add to the link
    for library in needed:
        package, path = package_of.get(library), resolved.get(library, "")
        if package:
            direct.setdefault(package, library)
        elif "/lib/swift/" in path and static_archive(library) and static_archive(library).is_file():
            swift_runtime.append(library)
            static_links |= autolink_libraries(static_archive(library))
        else:
            fail(section, f"{library} ({path or 'unresolved'}) belongs to no Debian package and is no Swift runtime "
                          "library with a static archive")
    if swift_runtime:
        lnk = swift_static / "static-stdlib-args.lnk"
        if lnk.is_file():
            static_links |= set(re.findall(r"(?<!\S)-l(\S+)", lnk.read_text()))
        system_only = sorted(n for n in static_links if not (swift_static / f"lib{n}.a").is_file())
        say(section, f"{len(swift_runtime)} of the binary's libraries are the Swift toolchain's "
                     f"({', '.join(swift_runtime[:3])}, "
                     "...): it was built without --static-swift-stdlib. Each has a static archive in "
                     f"{swift_static}; counted instead are the system libraries those archives and "
                     f"static-stdlib-args.lnk link, as the image's static build does: -l{' -l'.join(system_only)}")
        libraries = system_libraries()
        wanted = {name: libraries.get(name) for name in system_only}
        owned = debian_packages([p for p in wanted.values() if p])
        for name, library in wanted.items():
            if library and owned.get(library):
                direct.setdefault(owned[library], f"-l{name}")
            else:
                fail(section, f"-l{name} (the static Swift runtime links it) resolves to no Debian package ({library})")
    print("  linked directly, by package: " + ", ".join(f"{p} ({direct[p]})" for p in sorted(direct)))
    required = set(direct) - BOOKWORM_SLIM
    say(section, f"of those, debian:bookworm-slim has: {' '.join(sorted(set(direct) & BOOKWORM_SLIM))}")
    missing = sorted(required - named)
    expect(not missing, section, "the runtime stage installs every linked package bookworm-slim lacks ("
           + " ".join(sorted(required)) + ")", "missing from its apt-get line: " + " ".join(missing))
    unneeded = sorted(named - set(direct) - set(RUNTIME_EXTRAS))
    expect(not unneeded, section, "the runtime stage installs nothing the binary does not link, but "
           + ", ".join(f"{k} ({v})" for k, v in RUNTIME_EXTRAS.items()),
           "named but not linked: " + " ".join(unneeded))
    # What those libraries load in turn comes with the named packages' dependencies, or is in the slim image.
    provided = closure(named | BOOKWORM_SLIM)
    transitive = {p for p in package_of.values() if p} - set(direct)
    unprovided = sorted(transitive - provided)
    expect(not unprovided, section, f"the {len(transitive)} packages loaded only indirectly come with the named "
                                    "packages' dependencies or the slim image", "not provided: " + " ".join(unprovided))
    for library, path in resolved.items():
        if package_of.get(library) is None and library not in swift_runtime and library in resolved:
            archive = static_archive(library)
            expect(bool(archive) and archive.is_file() and "/lib/swift/" in path, section,
                   f"{library}, loaded by the Swift runtime, is linked statically with it too ({archive})")

    # The image's user and its strategy file.
    useradd = next((c for c in runtime["run"] if c.startswith("useradd")), "")
    uid = re.search(r"--uid\s+(\d+)", useradd)
    home = re.search(r"--home-dir\s+(\S+)", useradd)
    users = [a for i, a in runtime["lines"] if i == "USER"]
    expect(bool(uid) and uid.group(1) != "0" and bool(users) and users[-1] not in ("root", "0"), section,
           f"the image runs as a non-root user ({users[-1] if users else 'no USER'}, "
           f"uid {uid.group(1) if uid else '?'})")
    copied = [a.split() for i, a in runtime["lines"] if i == "COPY" and "--from" not in a]
    for source, destination in [c for c in copied if len(c) == 2]:
        if source.endswith(".yaml"):
            image_config = StrategyFile((REPO / source).read_text(), source)
            expect(bool(home) and image_config.spool_dir is not None and under(image_config.spool_dir, home.group(1)),
                   section, f"the image's {destination} ({source}) keeps its spool in the user's home "
                            f"{home.group(1) if home else '?'} ({image_config.spool_dir})")


def apt_install_packages(commands: list[str]) -> set[str]:
    packages: set[str] = set()
    for command in commands:
        words = shlex.split(command)
        if words[:2] == ["apt-get", "install"]:
            packages |= {w for w in words[2:] if not w.startswith("-")}
    return packages


def autolink_libraries(archive: Path) -> set[str]:
    completed = subprocess.run(["readelf", "-p", ".swift1_autolink_entries", str(archive)], capture_output=True,
                               text=True)
    return set(re.findall(r"(?<![\w-])-l([A-Za-z0-9_+.-]+)", completed.stdout))


# ---------------------------------------------------------------------------------------------------- Kubernetes


def probe_target(probe: dict | None) -> tuple[str | None, object]:
    http = (probe or {}).get("httpGet") or {}
    return http.get("path"), http.get("port")


def check_kubernetes(binary: Path, uid: str | None) -> None:
    section = "kubernetes"
    try:
        documents = [d for d in yaml.safe_load_all(SIDECAR.read_text()) if d]
        pvcs = [d for d in yaml.safe_load_all(PVC.read_text()) if d]
    except (OSError, yaml.YAMLError) as error:
        fail(section, f"the manifests do not parse: {error}")
        return
    ok(section, f"{rel(SIDECAR)} parses ({', '.join(d.get('kind', '?') for d in documents)}), "
                f"{rel(PVC)} parses ({', '.join(d.get('kind', '?') for d in pvcs)})")
    deployments = [d for d in documents if d.get("kind") == "Deployment"]
    maps = {d["metadata"]["name"]: d for d in documents if d.get("kind") == "ConfigMap"}
    if not expect(len(deployments) == 1, section, "one Deployment"):
        return
    spec = deployments[0]["spec"]["template"]["spec"]
    annotations = deployments[0]["spec"]["template"].get("metadata", {}).get("annotations", {})
    sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    batchhouse = [c for c in sidecars + spec.get("containers", []) if c.get("image", "").startswith("batchhouse:")]
    if not expect(len(batchhouse) == 1, section, "one Batchhouse container (image batchhouse:...)"):
        return
    container = batchhouse[0]
    kind = "a native sidecar (initContainers, restartPolicy: Always)" if container in sidecars else "a container"
    say(section, f"Batchhouse runs as {kind}")
    expect(container["image"] == "batchhouse:latest", section, f"image {container['image']} (the Dockerfile's, "
                                                               "built as batchhouse:latest)")
    expect(container.get("imagePullPolicy") in ("IfNotPresent", "Never"), section,
           f"imagePullPolicy: {container.get('imagePullPolicy')} (a local image; :latest defaults to Always)")
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if not expect(8123 in ports.values(), section, f"container port 8123 ({ports})"):
        return

    def port_number(port) -> int | None:
        return ports.get(port) if isinstance(port, str) else port

    for kind, path in [("livenessProbe", "/ping"), ("readinessProbe", "/health"), ("startupProbe", "/ping")]:
        if kind == "startupProbe" and kind not in container:
            continue
        got, port = probe_target(container.get(kind))
        expect(got == path and port_number(port) == 8123, section,
               f"{kind}: HTTP GET {got} on port {port} (= {port_number(port)})", f"wanted {path} on 8123")

    mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    config_volumes = [n for n, v in volumes.items() if "configMap" in v and n in mounts]
    if not expect(len(config_volumes) == 1 and mounts[config_volumes[0]]["mountPath"] == "/etc/batchhouse", section,
                  "a ConfigMap is mounted at /etc/batchhouse"):
        return
    map_name = volumes[config_volumes[0]]["configMap"]["name"]
    if not expect(map_name in maps, section, f"the ConfigMap {map_name} is in the file"):
        return
    args = container.get("args", []) + container.get("command", [])
    config_arg = args[args.index("--config") + 1] if "--config" in args else ""
    key = config_arg.rsplit("/", 1)[-1]
    data = maps[map_name].get("data", {})
    if not expect(config_arg == f"/etc/batchhouse/{key}" and key in data, section,
                  f"--config {config_arg} is the ConfigMap's key {key}"):
        return
    with tempfile.TemporaryDirectory(prefix="bh-deploy-k8s.") as scratch:
        path = Path(scratch) / key
        path.write_text(data[key])
        check_config(binary, section, path, f"the ConfigMap's {key}")
    config = StrategyFile(data[key], f"ConfigMap {map_name}")
    expect(config.listen_host not in ("127.0.0.1", "localhost", "::1") and config.listen_port == 8123, section,
           f"listen {config.listen}: reachable on the pod's IP, where probes and Prometheus come")

    spool_volumes = [n for n, m in mounts.items() if n in volumes and config.spool_dir
                     and under(config.spool_dir, m["mountPath"])]
    if expect(len(spool_volumes) == 1, section, f"spool.dir {config.spool_dir} is on a volume"):
        mount = mounts[spool_volumes[0]]["mountPath"]
        volume = volumes[spool_volumes[0]]
        expect(os.path.normpath(config.spool_dir) != os.path.normpath(mount), section,
               f"spool.dir is a folder inside the volume ({mount}), which the proxy can make 0700")
        expect(under(config.dead_letter_dir, mount), section, f"the dead letters ({config.dead_letter_dir}) are on "
                                                               "the same volume")
        if expect("emptyDir" in volume, section, "the spool is on an emptyDir by default"):
            limit = (volume["emptyDir"] or {}).get("sizeLimit")
            expect(limit is not None and config.spool_max_size is not None
                   and quantity_bytes(limit) > config.spool_max_size, section,
                   f"emptyDir sizeLimit {limit} is above spool.max_size ({mib(config.spool_max_size or 0)}): past "
                   "it the kubelet evicts the pod")
    text = SIDECAR.read_text()
    claims = re.findall(r"#\s*claimName:\s*(\S+)", text)
    pvc_names = {d["metadata"]["name"]: d for d in pvcs if d.get("kind") == "PersistentVolumeClaim"}
    if expect(bool(claims) and claims[0] in pvc_names, section,
              f"the commented alternative claims {claims[0] if claims else '?'}, the claim in {rel(PVC)}"):
        storage = pvc_names[claims[0]]["spec"]["resources"]["requests"]["storage"]
        expect(config.spool_max_size is not None and quantity_bytes(storage) > config.spool_max_size, section,
               f"the claim's {storage} is above spool.max_size")

    expect(str(annotations.get("prometheus.io/scrape")) == "true" and str(annotations.get("prometheus.io/port"))
           == "8123" and annotations.get("prometheus.io/path") == "/metrics", section,
           "prometheus.io annotations: scrape /metrics on 8123", str(annotations))
    resources = container.get("resources", {})
    memory = (resources.get("limits") or {}).get("memory")
    expect(bool((resources.get("requests") or {}).get("memory")) and memory is not None, section,
           f"resources: requests {resources.get('requests')}, limits {resources.get('limits')}")
    if memory:
        expect(quantity_bytes(memory) > config.max_buffer_memory, section,
               f"memory limit {memory} is above limits.max_buffer_memory ({mib(config.max_buffer_memory)})")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    expect(grace >= config.stop_budget, section,
           f"terminationGracePeriodSeconds {grace} covers the drain ({CONNECTION_DRAIN_SECONDS} s + 2 x "
           f"upstream.timeout = {config.stop_budget:g} s)")
    run_as = (container.get("securityContext") or {}).get("runAsUser")
    expect(uid is None or str(run_as) == uid, section, f"runAsUser {run_as} is the image's user ({uid})")
    apps = [c for c in spec.get("containers", []) if c is not container]
    talks = [c["name"] for c in apps if re.search(r"(localhost|127\.0\.0\.1):8123", json.dumps(c))]
    expect(bool(talks), section, f"the app container ({', '.join(talks) or 'none'}) talks to Batchhouse on "
                                 "localhost:8123")


# ---------------------------------------------------------------------------------------------------- compose


def compose_mounts(service: dict) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((str(volume.get("source", "")), str(volume.get("target", ""))))
        else:
            parts = str(volume).split(":")
            mounts.append((parts[0], parts[1] if len(parts) > 1 else parts[0]))
    return mounts


def host_path(source: str) -> Path | None:
    """A bind mount's file in the repository (relative to examples/), or None for a named volume."""
    if not source.startswith((".", "/")):
        return None
    return (COMPOSE.parent / source).resolve()


def container_file(mounts: list[tuple[str, str]], target: str) -> Path | None:
    """The repository file the container sees at `target`, through a file or folder mount."""
    for source, mounted in mounts:
        path = host_path(source)
        if path is None:
            continue
        if os.path.normpath(target) == os.path.normpath(mounted):
            return path
        if under(target, mounted):
            return path / os.path.relpath(target, mounted)
    return None


def check_compose(binary: Path) -> None:
    section = "compose"
    try:
        compose = yaml.safe_load(COMPOSE.read_text())
    except (OSError, yaml.YAMLError) as error:
        fail(section, f"{rel(COMPOSE)} does not parse: {error}")
        return
    services = compose.get("services", {})
    ok(section, f"{rel(COMPOSE)} parses: services {', '.join(services)}")
    for name, image in [("clickhouse", "clickhouse/clickhouse-server"), ("prometheus", "prom/prometheus"),
                        ("grafana", "grafana/grafana")]:
        expect(str(services.get(name, {}).get("image", "")).split(":")[0] == image, section,
               f"service {name} runs the official {image} image ({services.get(name, {}).get('image')})")
    batchhouse = services.get("batchhouse")
    if not expect(batchhouse is not None, section, "a batchhouse service"):
        return
    build = batchhouse.get("build") or {}
    context = (COMPOSE.parent / build.get("context", ".")).resolve()
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    expect(context == REPO and dockerfile.resolve() == DOCKERFILE, section,
           f"batchhouse is built from the repository's Dockerfile (context {build.get('context')})")

    every = [(name, source, target) for name, service in services.items() for source, target in compose_mounts(service)]
    named_volumes = set((compose.get("volumes") or {}).keys())
    for name, source, target in every:
        path = host_path(source)
        if path is None:
            expect(source in named_volumes, section, f"{name}: {source} is a declared named volume")
        else:
            expect(path.exists() and under(str(path), str(REPO)), section,
                   f"{name}: {source} -> {target} exists in the repository ({rel(path)})",
                   "missing: the compose file would mount an empty folder there" if not path.exists()
                   else "outside the repository")

    mounts = compose_mounts(batchhouse)
    command = batchhouse.get("command") or []
    command = shlex.split(command) if isinstance(command, str) else command
    config_target = (command[command.index("--config") + 1] if "--config" in command
                     else "/etc/batchhouse/batchhouse.yaml")
    config_file = container_file(mounts, config_target)
    if not expect(config_file is not None and config_file.is_file(), section,
                  f"--config {config_target} is a file of the repository ({rel(config_file) if config_file else '?'})"):
        return
    check_config(binary, section, config_file, rel(config_file))
    config = StrategyFile(config_file.read_text(), rel(config_file))
    upstreams = [re.match(r"https?://([^:/]+):?(\d+)?", s) for s in config.servers]
    expect(all(m and m.group(1) in services and (m.group(2) or "80") == "8123" for m in upstreams), section,
           f"upstream.servers ({', '.join(config.servers)}) is the compose ClickHouse's HTTP port")
    ports = [str(p) for p in batchhouse.get("ports", [])]
    expect(any(p.endswith(f":{config.listen_port}") for p in ports) and config.listen_host not in ("127.0.0.1",
                                                                                                  "localhost"),
           section, f"listen {config.listen} is published ({', '.join(ports)})")
    spool_mounts = [t for s, t in mounts if host_path(s) is None and config.spool_dir and under(config.spool_dir, t)]
    expect(bool(spool_mounts) and os.path.normpath(spool_mounts[0]) != os.path.normpath(config.spool_dir or ""),
           section, f"spool.dir {config.spool_dir} is a folder on a named volume ({', '.join(spool_mounts) or 'none'})")
    expect(bool(spool_mounts) and under(config.dead_letter_dir, spool_mounts[0]), section,
           f"the dead letters ({config.dead_letter_dir}) are on the same volume")
    grace = batchhouse.get("stop_grace_period")
    expect(grace is not None and duration_seconds(grace) >= config.stop_budget, section,
           f"stop_grace_period {grace} covers the drain ({config.stop_budget:g} s; Docker's default is 10 s)")
    health = json.dumps((batchhouse.get("healthcheck") or {}).get("test", ""))
    expect("/ping" in health and str(config.listen_port) in health, section,
           f"the health check asks /ping on {config.listen_port}")

    # Prometheus: the mounted files, and what prometheus.yml expects of them.
    prometheus_mounts = compose_mounts(services.get("prometheus", {}))
    for target, wanted in [("/etc/prometheus/prometheus.yml", "prometheus/prometheus.yml"),
                           ("/etc/prometheus/alerts.yml", "prometheus/alerts.yml")]:
        path = container_file(prometheus_mounts, target)
        expect(path == (EXAMPLES / wanted).resolve(), section, f"prometheus sees examples/{wanted} at {target}")
    prometheus_yml = EXAMPLES / "prometheus/prometheus.yml"
    if prometheus_yml.is_file():
        prometheus = yaml.safe_load(prometheus_yml.read_text()) or {}
        for rule in prometheus.get("rule_files", []):
            target = rule if rule.startswith("/") else "/etc/prometheus/" + rule
            path = container_file(prometheus_mounts, target)
            expect(path is not None and path.is_file(), section, f"prometheus.yml's rule file {rule} is mounted "
                                                                 f"({target})")
        targets = [(job.get("metrics_path", "/metrics"), t) for job in prometheus.get("scrape_configs", [])
                   for static in job.get("static_configs", []) for t in static.get("targets", [])]
        expect((("/metrics", f"batchhouse:{config.listen_port}") in targets), section,
               f"prometheus.yml scrapes batchhouse:{config.listen_port}/metrics ({targets})")

    # Grafana: the provisioned datasource, where the dashboard provider looks, and what the dashboard refers to.
    grafana_mounts = compose_mounts(services.get("grafana", {}))
    datasource_file = container_file(grafana_mounts, "/etc/grafana/provisioning/datasources/prometheus.yml")
    dashboards_file = container_file(grafana_mounts, "/etc/grafana/provisioning/dashboards/batchhouse.yml")
    expect(datasource_file == (EXAMPLES / "grafana/provisioning/datasources/prometheus.yml").resolve()
           and dashboards_file == (EXAMPLES / "grafana/provisioning/dashboards/batchhouse.yml").resolve(), section,
           "grafana gets both provisioning files")
    if datasource_file and datasource_file.is_file():
        sources = (yaml.safe_load(datasource_file.read_text()) or {}).get("datasources", [])
        prom = [s for s in sources if s.get("type") == "prometheus"]
        url = prom[0].get("url", "") if prom else ""
        host = re.match(r"https?://([^:/]+):(\d+)", url)
        expect(len(prom) == 1 and prom[0].get("uid") == "prometheus" and prom[0].get("name") == "Prometheus", section,
               "the datasource is Prometheus, uid prometheus")
        expect(bool(host) and host.group(1) in services and host.group(2) == "9090", section,
               f"the datasource points at the compose Prometheus ({url})")
    dashboard_target = [t for s, t in grafana_mounts if s.endswith(".json")]
    if dashboards_file and dashboards_file.is_file():
        providers = (yaml.safe_load(dashboards_file.read_text()) or {}).get("providers", [])
        paths = [p.get("options", {}).get("path", "") for p in providers]
        expect(bool(dashboard_target) and any(under(dashboard_target[0], p) for p in paths if p), section,
               f"the dashboard provider reads {paths}, where the dashboard is mounted ({dashboard_target})")
    dashboard = EXAMPLES / "grafana/batchhouse.json"
    if dashboard.is_file():
        check_dashboard(section, dashboard)


def check_dashboard(section: str, path: Path) -> None:
    try:
        board = json.loads(path.read_text())
    except ValueError as error:
        fail(section, f"{rel(path)} is not JSON: {error}")
        return
    variables = {v.get("name") for v in (board.get("templating") or {}).get("list", [])
                 if v.get("type") == "datasource"}
    refs: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            source = node.get("datasource")
            if isinstance(source, dict) and source.get("type") in ("prometheus", None) and "uid" in source:
                refs.append(str(source["uid"]))
            elif isinstance(source, str) and source not in ("-- Grafana --", "-- Mixed --", "-- Dashboard --"):
                refs.append(source)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(board)
    # File provisioning does not fill in __inputs: ${DS_PROMETHEUS} resolves only through a datasource variable.
    bad = sorted({r for r in refs if r != "prometheus" and r.strip("${}") not in variables})
    expect(not bad, section, f"the dashboard's {len(refs)} Prometheus references use uid prometheus (or a datasource "
                             "variable)", "unresolved when provisioned: " + ", ".join(bad))


# ---------------------------------------------------------------------------------------------------- smoke


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def check_smoke(binary: Path) -> None:
    section = "smoke"
    compose = yaml.safe_load(COMPOSE.read_text()) if COMPOSE.is_file() else {}
    health_test = ((compose.get("services", {}).get("batchhouse", {}).get("healthcheck") or {}).get("test")) or []
    with tempfile.TemporaryDirectory(prefix="bh-deploy-smoke.") as scratch:
        port, dead = free_port(), free_port()
        config = Path(scratch) / "batchhouse.yaml"
        config.write_text(f"listen: 127.0.0.1:{port}\nupstream:\n  servers: [http://127.0.0.1:{dead}]\n"
                          f"spool:\n  dir: {scratch}/spool\n  max_size: 64MiB\n")
        log = open(Path(scratch) / "log", "w+")
        process = subprocess.Popen([str(binary), "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            status, body = 0, ""
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    status, body = get(f"http://127.0.0.1:{port}/ping")
                    break
                except OSError:
                    time.sleep(0.05)
            if not expect(status == 200 and body == "Ok.\n", section, f"/ping answers {status} {body!r}"):
                return
            status, body = get(f"http://127.0.0.1:{port}/health")
            expect(status in (200, 503) and "status" in json.loads(body or "{}"), section,
                   f"/health answers {status} with a status ({json.loads(body or '{}').get('status')})")
            status, body = get(f"http://127.0.0.1:{port}/metrics")
            expect(status == 200 and "batchhouse_requests_total" in body, section, f"/metrics answers {status}, "
                                                                                   "Prometheus text")
            if health_test[:1] == ["CMD"]:
                command = [part.replace("8123", str(port)) for part in health_test[1:]]
                completed = subprocess.run(command, capture_output=True, text=True, timeout=10)
                expect(completed.returncode == 0, section, "the compose health check command passes (port "
                                                           f"{port} for 8123)", completed.stderr.strip())
            process.send_signal(signal.SIGHUP)
            reloaded = False
            for _ in range(100):
                time.sleep(0.05)
                log.seek(0)
                if "configuration reloaded" in log.read():
                    reloaded = True
                    break
            expect(reloaded, section, "SIGHUP reloads the strategy file (ExecReload=)")
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
            expect(code == 0, section, f"SIGTERM stops it gracefully: exit status {code} after "
                                       f"{time.monotonic() - started:.1f} s")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.seek(0)
            tail = log.read().splitlines()[-4:]
            log.close()
            if any(f.startswith("smoke") for f in failures):
                print("  proxy log, last lines:\n    " + "\n    ".join(tail))


# ---------------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True, type=Path, help="the release binary")
    parser.add_argument("--only", nargs="*", choices=["systemd", "dockerfile", "kubernetes", "compose", "smoke"])
    options = parser.parse_args()
    binary = options.binary.resolve()
    chosen = options.only or ["systemd", "dockerfile", "kubernetes", "compose", "smoke"]
    started = time.monotonic()
    uid_match = re.search(r"--uid\s+(\d+)", DOCKERFILE.read_text())
    uid = uid_match.group(1) if uid_match else None
    for name in chosen:
        print(f"\n== {name}", flush=True)
        section_started = time.monotonic()
        try:
            {"systemd": lambda: check_systemd(binary), "dockerfile": lambda: check_dockerfile(binary),
             "kubernetes": lambda: check_kubernetes(binary, uid), "compose": lambda: check_compose(binary),
             "smoke": lambda: check_smoke(binary)}[name]()
        except Exception as error:  # a check that cannot even run is a failure too, with its reason
            fail(name, f"the check stopped: {type(error).__name__}: {error}")
        say(name, f"{time.monotonic() - section_started:.1f} s")
    print()
    if failures:
        print(f"deploy-check: {len(failures)} FAILED ({time.monotonic() - started:.1f} s):")
        for failure in failures:
            print("  - " + failure)
        return 1
    print(f"deploy-check: all passed ({', '.join(chosen)}; {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    # A TERM unwinds through the `finally` blocks, so the proxies the smoke test started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
