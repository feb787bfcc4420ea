#!/usr/bin/env bash
# The package works when installed for real, not only from this checkout: build the sdist and, from it, the
# wheel (python -m build), pip install the wheel into a fresh venv in a temporary folder, and from an empty
# folder run the commands a new user runs first. `make test` calls this, so a file left out of the package
# (a bundled scenario, the dashboard page) fails CI.
#
#   bash scripts/wheel-check.sh [PYTHON]    # PYTHON: an interpreter with `build` installed (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${1:-python3}
TMP=$(mktemp -d)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT
step() { echo "wheel-check: $*"; }

step "building the sdist and wheel"
# From a copy of the files git would commit (tracked or new, not ignored): a stale build/ or *.egg-info here
# could otherwise smuggle in files the package data no longer names.
mkdir "$TMP/src"
git ls-files -z --cached --others --exclude-standard \
    | tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$TMP/src"
"$PYTHON" -m build --outdir "$TMP/dist" "$TMP/src" >"$TMP/build.log" 2>&1 || { cat "$TMP/build.log"; exit 1; }
WHEEL=$(ls "$TMP"/dist/*.whl)

step "installing $(basename "$WHEEL") into a fresh venv"
"$PYTHON" -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$WHEEL"
BIN="$TMP/venv/bin"

mkdir "$TMP/empty"
cd "$TMP/empty"   # nothing of the checkout here: only what the wheel installed can be found
step "pipesim --help"
"$BIN/pipesim" --help >/dev/null
step "pipesim validate baseline"
"$BIN/pipesim" validate baseline
step "pipesim run baseline --until 20"
"$BIN/pipesim" run baseline --until 20 >/dev/null

step "pipesim serve --port 0, GET /healthz, SIGINT"
"$BIN/pipesim" serve --port 0 >serve.log 2>&1 &
SERVER_PID=$!
URL=
for _ in $(seq 100); do
    URL=$(grep -o 'dashboard http://[0-9.:]*/' serve.log | cut -d' ' -f2 || true)
    [ -n "$URL" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
[ -n "$URL" ] || { echo "wheel-check: pipesim serve did not start:"; cat serve.log; exit 1; }
HEALTH=$("$BIN/python" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' \
    "${URL}healthz")
[ "$(echo "$HEALTH" | tr -d '[:space:]')" = ok ] || { echo "wheel-check: /healthz said: $HEALTH"; exit 1; }
kill -INT "$SERVER_PID"
STATUS=0
wait "$SERVER_PID" || STATUS=$?
SERVER_PID=
[ "$STATUS" = 0 ] || { echo "wheel-check: pipesim serve exited $STATUS on SIGINT:"; cat serve.log; exit 1; }

# The README's commands as its reader runs them after `pip install`: every command block, top to bottom, from
# an empty folder of its own, with this venv's pipesim (PYTHON, maybe a path relative to the checkout, runs
# pytest there; the commands run the installed pipesim).
step "the README's commands, from an empty folder"
(cd "$ROOT" && PIPESIM_INSTALLED_BIN="$BIN" "$PYTHON" -m pytest -q -p no:cacheprovider \
    tests/test_readme.py::test_readme_commands_after_install)
step "ok"
