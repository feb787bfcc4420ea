#!/usr/bin/env bash
# The package works when installed for real, not only from this checkout: build the sdist and, from it, the
# wheel (python -m build), pip install the wheel into a fresh venv in a temporary folder, and from an empty
# folder run the commands a new user runs first. `make test` calls this, so a file left out of the package
# (a bundled scenario, the dashboard page) fails CI.
#
# Then the other Pythons pyproject.toml admits: the wheel is installed into a venv of Python 3.12 with every
# runtime dependency at the oldest release series pyproject.toml admits (so that its lower bounds stay true),
# and of Python 3.13 with the newest; in each, a run streamed to a folder (--out), read back, and one run's
# fingerprint (turns_sha256): the fingerprints must equal PYTHON's. Those interpreters are found as
# pythonX.Y on PATH or under pyenv ($PYENV_ROOT/versions/X.Y.*, default ~/.pyenv; a fresh CI machine gets
# them with `pyenv install 3.12 3.13`); a version not found is skipped, saying so.
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
# One run's fingerprint: a function of its turns table alone, the same on every Python and library version.
FINGERPRINT='import pipesim; from pipesim.replications import turns_digest
print(turns_digest(pipesim.simulate("baseline", seed=7, until=200, progress=False).turns))'
find_python() {  # an interpreter of Python $1 that runs (a pyenv shim of a version not selected does not)
    local candidate
    for candidate in "$(command -v "python$1" || true)" "${PYENV_ROOT:-$HOME/.pyenv}/versions/$1".*/bin/python3; do
        if [ -x "$candidate" ] && [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' \
                                        2>/dev/null)" = "$1" ]; then
            echo "$candidate"
            return
        fi
    done
}

# A run folder read back: the fingerprints of its turns and of its sessions (which `pipesim run --out` builds
# from the events file it streamed).
FOLDER_FINGERPRINTS='import sys, pipesim; from pipesim.replications import turns_digest
res = pipesim.Results.load(sys.argv[1]); print(turns_digest(res.turns), turns_digest(res.sessions))'
# Every runtime dependency at the oldest release series admitted, e.g. pandas>=2.1 as pandas==2.1.*.
OLDEST=$("$PYTHON" -c 'import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(re.sub(r">=([0-9.]+).*", r"==\1.*", d) for d in deps))')

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

check_serve() {  # pipesim serve of the venv whose bin/ is $1: its pages and the admin API answer; SIGINT ends it
    step "pipesim serve --port 0, GET /healthz and the admin API's health and OpenAPI document, SIGINT"
    : >serve.log  # emptied before the server starts: a previous server's address must not be read as its
    "$1/pipesim" serve --port 0 >serve.log 2>&1 &
    SERVER_PID=$!
    local url= admin= health status=0
    for _ in $(seq 100); do
        url=$(grep -o 'dashboard http://[0-9.:]*/' serve.log | cut -d' ' -f2 || true)
        [ -n "$url" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$url" ] || { echo "wheel-check: pipesim serve did not start:"; cat serve.log; exit 1; }
    health=$("$1/python" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' \
        "${url}healthz")
    [ "$(echo "$health" | tr -d '[:space:]')" = ok ] || { echo "wheel-check: /healthz said: $health"; exit 1; }
    admin=$(grep -o 'admin API http://[0-9.:]*/__admin' serve.log | cut -d' ' -f3)
    "$1/python" -c 'import json, sys, urllib.request
for path in ("/health", "/openapi.json"):
    json.load(urllib.request.urlopen(sys.argv[1] + path))' "$admin" || { echo "wheel-check: the admin API $admin" \
        "failed:"; cat serve.log; exit 1; }
    kill -INT "$SERVER_PID"
    wait "$SERVER_PID" || status=$?
    SERVER_PID=
    [ "$status" = 0 ] || { echo "wheel-check: pipesim serve exited $status on SIGINT:"; cat serve.log; exit 1; }
}
check_serve "$BIN"

# The README's commands as its reader runs them after `pip install`: every command block, top to bottom, from
# an empty folder of its own, with this venv's pipesim (PYTHON, maybe a path relative to the checkout, runs
# pytest there; the commands run the installed pipesim).
step "the README's commands, from an empty folder"
(cd "$ROOT" && PIPESIM_INSTALLED_BIN="$BIN" "$PYTHON" -m pytest -q -p no:cacheprovider \
    tests/test_readme.py::test_readme_commands_after_install)

step "one run's fingerprint, and a run folder's"
EXPECTED=$("$BIN/python" -c "$FINGERPRINT")
"$BIN/pipesim" run baseline --until 20 --out "$TMP/out" >/dev/null
EXPECTED_FOLDER=$("$BIN/python" -c "$FOLDER_FINGERPRINTS" "$TMP/out")
for VERSION in 3.12 3.13; do
    OTHER=$(find_python "$VERSION")
    PINS=$([ "$VERSION" = 3.12 ] && echo "$OLDEST" || true)
    if [ -z "$OTHER" ]; then
        step "Python $VERSION not found (python$VERSION on PATH, or pyenv's versions/$VERSION.*): SKIPPED its" \
             "check; install it (pyenv install $VERSION) to run it"
        continue
    fi
    step "installing $(basename "$WHEEL") into a fresh Python $VERSION venv ($OTHER)${PINS:+ with $PINS}"
    "$OTHER" -m venv "$TMP/venv-$VERSION"
    # shellcheck disable=SC2086  # PINS: one word per requirement
    "$TMP/venv-$VERSION/bin/python" -m pip install --quiet --disable-pip-version-check "$WHEEL" $PINS
    step "Python $VERSION: pipesim run baseline --until 20 --out DIR --csv --jsonl, the folder read back, and" \
         "one run's fingerprint"
    "$TMP/venv-$VERSION/bin/pipesim" run baseline --until 20 --out "$TMP/out-$VERSION" --csv --jsonl >/dev/null
    GOT=$("$TMP/venv-$VERSION/bin/python" -c "$FOLDER_FINGERPRINTS" "$TMP/out-$VERSION")
    [ "$GOT" = "$EXPECTED_FOLDER" ] || { echo "wheel-check: Python $VERSION read back the run folder's turns and" \
        "sessions with the fingerprints $GOT, $("$BIN/python" --version) with $EXPECTED_FOLDER"; exit 1; }
    check_serve "$TMP/venv-$VERSION/bin"
    GOT=$("$TMP/venv-$VERSION/bin/python" -c "$FINGERPRINT")
    [ "$GOT" = "$EXPECTED" ] || { echo "wheel-check: Python $VERSION gave the fingerprint $GOT," \
                                      "$("$BIN/python" --version) gave $EXPECTED"; exit 1; }
done
step "ok"
