#!/usr/bin/env bash
# Makes the Python environment the Django tests use, idempotently: a virtualenv outside the
# clone (keyed by scripts/python-requirements.txt, so a change makes a new one) with Django,
# django-redis, psycopg and schemathesis from PyPI. Prints the interpreter's path.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${CACHEWARDEN_TOOLS:-/var/tmp/cachewarden-tools}"
key="$(sha256sum scripts/python-requirements.txt | cut -c1-12)"
venv="$root/venv-$key"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import django, django_redis, psycopg, schemathesis, openapi_spec_validator, pytest_django" 2>/dev/null; then
  echo "ensure-python: creating $venv" >&2
  rm -rf "$venv"
  mkdir -p "$root"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/python-requirements.txt >&2
fi
echo "$venv/bin/python"
