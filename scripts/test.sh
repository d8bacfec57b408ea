#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit, property and integration tests against
# real local PostgreSQL and Redis (started and configured by ensure-services.sh); the Django
# snippet and the API fuzzer in a Python virtualenv; the web console's unit tests (Vitest) and
# browser tests (Debian's Chromium through playwright-core).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
scripts/ensure-build-tools.sh
# The Kafka source's tests start their own tansu brokers.
CACHEWARDEN_TANSU="$(scripts/ensure-tansu.sh)"
export CACHEWARDEN_TANSU
# README's Django snippet runs in a real Django (a virtualenv outside the clone).
CACHEWARDEN_PYTHON="$(scripts/ensure-python.sh)"
export CACHEWARDEN_PYTHON
# The console: built before the binary that embeds it, unit-tested, then driven in Chromium
# by tests/console.rs.
CACHEWARDEN_CHROMIUM="$(scripts/ensure-browser.sh)"
export CACHEWARDEN_CHROMIUM
scripts/build-console.sh
(cd console && npx --no-install vitest run)
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy || true
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# The fault-injection tests need the named failpoints compiled in (src/failpoints.rs).
cargo clippy --all-targets --features failpoints -- -D warnings
cargo nextest run --features failpoints --no-fail-fast "$@"
