#!/usr/bin/env bash
# Generate the TypeScript types of the /ws protocol from its JSON Schema.
#
#   scripts/gen-types.sh [OUTPUT]      (default: frontend/src/pipesim-protocol.ts, which is committed)
#
# 1. Python writes one combined JSON Schema of every message (pipesim.live.contract.combined_json_schema,
#    built from the pydantic models of pipesim/protocol.py).
# 2. json-schema-to-typescript (pinned in frontend/package.json, locked in frontend/package-lock.json)
#    turns it into types. `npm ci` installs it into frontend/node_modules first when that is missing or
#    older than the lock file.
#
# tests/test_contract.py runs this into a temporary file and fails if the committed file differs, so
# after changing pipesim/protocol.py run this script and commit its output.
# Environment: PYTHON (default .venv/bin/python, else python3).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/frontend/src/pipesim-protocol.ts}"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
for tool in node npm; do
  command -v "$tool" >/dev/null 2>&1 || { echo "gen-types: $tool not found (install Node.js >= 18)" >&2; exit 3; }
done

frontend="$root/frontend"
if [ ! -x "$frontend/node_modules/.bin/json2ts" ] \
   || [ "$frontend/package-lock.json" -nt "$frontend/node_modules/.package-lock.json" ]; then
  echo "gen-types: npm ci in frontend/ ..." >&2
  (cd "$frontend" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$root" && "$python" -c 'import json, sys
from pipesim.live.contract import combined_json_schema
json.dump(combined_json_schema(), sys.stdout, indent=2)
sys.stdout.write("\n")') > "$tmp/pipesim-protocol.schema.json"

banner='/**
 * TypeScript types of the pipesim /ws WebSocket protocol (port 8001), generated from pipesim/protocol.py.
 * DO NOT EDIT: run scripts/gen-types.sh (tests/test_contract.py checks that this file is up to date).
 */'
mkdir -p "$(dirname "$out")"
"$frontend/node_modules/.bin/json2ts" \
  --input "$tmp/pipesim-protocol.schema.json" --output "$out" \
  --no-additionalProperties --unreachableDefinitions --bannerComment "$banner"
echo "gen-types: wrote $out" >&2
