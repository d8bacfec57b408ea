#!/usr/bin/env bash
# Builds the web console (console/ → console/dist, embedded in the binary by build.rs),
# idempotently: installs the locked npm packages when the lock file changed, then runs Vite.
# Needs Node.js 20 and npm (Debian: apt-get install nodejs npm).
set -euo pipefail
cd "$(dirname "$0")/../console"
command -v npm >/dev/null || { echo "build-console: Node.js and npm are required (apt-get install nodejs npm)" >&2; exit 1; }
lock_hash="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ "$(cat node_modules/.cachewarden-lock 2>/dev/null || true)" != "$lock_hash" ]; then
  echo "build-console: installing the console's npm packages" >&2
  npm ci --no-audit --no-fund --loglevel=error >&2
  echo "$lock_hash" > node_modules/.cachewarden-lock
fi
npx --no-install vite build --logLevel warn >&2
