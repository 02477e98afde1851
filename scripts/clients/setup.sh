# Sourced by scripts/client-matrix and scripts/http-cases (bash, set -euo pipefail, cwd = the repository):
# finds the binary, starts the upstreams that the environment does not name, and stops what it started on exit.
#   BATCHHOUSE_BIN (or BATCHHOUSE_BINARY): the binary to run; builds nothing.
#   Else .build/release/batchhouse when it is newer than every source file, else .build/debug/batchhouse when that
#   one is (what `swift build --build-tests` in scripts/test leaves), else `swift build -c release` first.
#   CLICKHOUSE_URL / MODERN_URL: upstreams to reuse (scripts/test started them); unset, they are started here.

tool_log() { echo "$TOOL_NAME: $*" >&2; }

fresh() { [ -x "$1" ] && [ -z "$(find Sources Package.swift -newer "$1" -print -quit)" ]; }

binary=${BATCHHOUSE_BIN:-${BATCHHOUSE_BINARY:-}}
if [ -z "$binary" ]; then
    if fresh .build/release/batchhouse; then
        binary=.build/release/batchhouse
    elif fresh .build/debug/batchhouse; then
        binary=.build/debug/batchhouse
    else
        tool_log "building the release binary"
        swift build -c release --product batchhouse >&2
        binary=.build/release/batchhouse
    fi
fi
binary=$(cd "$(dirname "$binary")" && pwd -P)/$(basename "$binary")
tool_log "binary $binary"

venv=$(scripts/python-env)
work=$(mktemp -d "${TMPDIR:-/tmp}/bh-$TOOL_NAME.XXXXXX")
started_clickhouse=""
started_modern=""
cleanup() {
    if [ -n "$started_clickhouse" ]; then scripts/clickhouse-stop "$started_clickhouse" >&2 || true; fi
    if [ -n "$started_modern" ]; then scripts/modern-stop "$started_modern" >&2 || true; fi
    if [ "${KEEP_WORK:-0}" = 1 ]; then tool_log "work folder kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
if [ -z "${CLICKHOUSE_URL:-}" ]; then
    eval "$(scripts/clickhouse-start)"
    started_clickhouse=$CLICKHOUSE_DIR
fi
if [ -z "${MODERN_URL:-}" ]; then
    eval "$(scripts/modern-start)"
    started_modern=$MODERN_DIR
fi
