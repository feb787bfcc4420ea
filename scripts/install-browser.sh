#!/usr/bin/env bash
# Headless Chromium for the dashboard's end-to-end test, from Debian's packages.
# Without it (and without root to install it) that one test is skipped with a clear reason.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: chromium not found and cannot apt-get it here; the browser test will be skipped" >&2
  exit 0
fi
echo "install-browser: installing Debian's chromium (once)..." >&2
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
