#!/usr/bin/env bash
# Makes Debian's Chromium available for the console's browser tests, idempotently (no browser
# can be downloaded by a test tool here: playwright-core drives this one). Prints its path.
set -euo pipefail
for c in "${CACHEWARDEN_CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
  if [ -n "$c" ] && [ -x "$c" ]; then
    echo "$c"
    exit 0
  fi
done
echo "ensure-browser: installing Debian's chromium (once)" >&2
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
$SUDO apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >&2
echo /usr/bin/chromium
