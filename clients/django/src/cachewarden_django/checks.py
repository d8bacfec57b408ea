"""System checks: a model that a cachewarden rule names must have the REPLICA IDENTITY the rule
needs, or the worker cannot see the old row's values it renders keys from (it refuses such
rules at start). Runs with the database checks (``manage.py check --database default``,
``migrate``) when ``CACHEWARDEN["RULES_DIR"]`` is set."""

from __future__ import annotations

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.db import connections


def _identity(cursor, table: str):
    """(relreplident, columns it carries) of a table, or None when it does not exist."""
    cursor.execute("SELECT to_regclass(%s)::oid", [table])
    row = cursor.fetchone()
    if not row or row[0] is None:
        return None
    oid = row[0]
    cursor.execute("SELECT relreplident FROM pg_class WHERE oid = %s", [oid])
    ident = cursor.fetchone()[0]
    if ident == "f":
        return ident, None  # every column
    if ident == "n":
        return ident, set()
    index = "i.indisreplident" if ident == "i" else "i.indisprimary"
    cursor.execute(
        f"SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        f"AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND {index}",
        [oid],
    )
    return ident, {r[0] for r in cursor.fetchall()}


_NAMES = {"d": "DEFAULT (the primary key)", "n": "NOTHING", "i": "USING INDEX", "f": "FULL"}


@checks.register(checks.Tags.database)
def replica_identity(app_configs=None, databases=None, **kwargs):
    conf = getattr(settings, "CACHEWARDEN", {})
    rules_dir = conf.get("RULES_DIR")
    if not rules_dir or not databases:
        return []
    from . import rules as rule_files

    try:
        needs = rule_files.load(rules_dir)
    except Exception as e:  # a broken rule file is the worker's to report; say it once
        return [checks.Warning(f"cannot read the rule files in {rules_dir}: {e}", id="cachewarden.W002")]
    alias = conf.get("DATABASE", "default")
    if alias not in databases:
        return []
    models = {}
    for m in apps.get_models():
        table = m._meta.db_table
        models[table if "." in table else f"public.{table}"] = m
    out = []
    with connections[alias].cursor() as cur:
        for rule in needs:
            model = models.get(rule.table)
            if model is None:
                continue
            found = _identity(cur, rule.table)
            if found is None:
                continue
            ident, carried = found
            if carried is None:
                continue
            missing = {c: why for c, why in rule.old_columns.items() if c not in carried}
            changed = [c for c in rule.changed if c not in carried]
            label = model._meta.label
            hint = (
                f"add a migration with cachewarden_django.operations.SetReplicaIdentity("
                f"{model._meta.model_name!r}, 'FULL'), or run: ALTER TABLE {rule.table} REPLICA IDENTITY FULL;"
            )
            if missing:
                cols = ", ".join(f"{c} ({why})" for c, why in sorted(missing.items()))
                out.append(
                    checks.Warning(
                        f"cachewarden rule {rule.name!r} ({rule.file}) reads old values of {cols} of {label}, "
                        f"but its table's REPLICA IDENTITY is {_NAMES[ident]}, which does not carry them",
                        hint=hint,
                        obj=model,
                        id="cachewarden.W001",
                    )
                )
            elif changed:
                out.append(
                    checks.Warning(
                        f"cachewarden rule {rule.name!r} ({rule.file}) fires only when {', '.join(changed)} "
                        f"changed, but {label}'s REPLICA IDENTITY is {_NAMES[ident]}: every update fires",
                        hint=hint,
                        obj=model,
                        id="cachewarden.W003",
                    )
                )
    return out
