#!/usr/bin/env bash
# Runs backflow on the bundled example: writes a small Parquet export into
# examples/users/data, previews it, then syncs it to examples/users/out/users.jsonl.
# Needs only Go. Run it twice: the second run sends nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

mkdir -p bin
go build -o bin/backflow ./cmd/backflow
if [ ! -d examples/users/data ]; then
  go run ./testdata/gen -out examples/users/data -files 3 -rows 1000
fi
cfg=examples/users/backflow.yaml
./bin/backflow schema -c "$cfg"
./bin/backflow preview -c "$cfg" -n 3
./bin/backflow sync -c "$cfg" --report examples/users/out/report.json
echo
echo "First messages of examples/users/out/users.jsonl:"
head -n 3 examples/users/out/users.jsonl
echo
echo "Run report (examples/users/out/report.json):"
cat examples/users/out/report.json
