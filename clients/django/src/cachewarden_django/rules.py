"""Reads cachewarden rule files for the system check: each rule's table and the old-row columns
it reads (mirroring the worker's own ``check``: ``{old.col}``, ``{col}`` on delete, ``old.col`` in
``when``, and ``changed`` columns, which need old values on update)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]+)\}")
_OLD_IN_WHEN = re.compile(r"\bold\.([A-Za-z_][A-Za-z0-9_]*)")
_ALL_OPS = {"insert", "update", "delete", "truncate"}


@dataclass
class RuleNeeds:
    name: str
    table: str  # schema.table
    file: str
    #: Old-row columns read, with why.
    old_columns: dict[str, str] = field(default_factory=dict)
    #: ``changed`` columns (compared with their old values on update).
    changed: list[str] = field(default_factory=list)


def _fields(template: str):
    for m in _PLACEHOLDER.finditer(template):
        if m.group(1):
            yield m.group(1).strip()


def load(rules_dir) -> list[RuleNeeds]:
    out = []
    for path in sorted(Path(rules_dir).glob("*.toml")):
        data = tomllib.loads(path.read_text())
        for r in data.get("rule", []):
            table = r["table"] if "." in r["table"] else f"public.{r['table']}"
            ops = set(r.get("ops", _ALL_OPS))
            needs = RuleNeeds(name=r["name"], table=table, file=str(path), changed=list(r.get("changed", [])))
            templates = [*r.get("keys", []), *r.get("patterns", []), *r.get("tags", []), *r.get("bump", [])]
            if "warm" in r and "key" in r["warm"]:
                templates.append(r["warm"]["key"])
            for t in templates:
                for f in _fields(t):
                    if f.startswith("old."):
                        needs.old_columns.setdefault(f[4:], f"{{{f}}}")
                    elif not f.startswith("new.") and "delete" in ops:
                        needs.old_columns.setdefault(f, f"{{{f}}} on delete")
            for col in _OLD_IN_WHEN.findall(r.get("when", "")):
                needs.old_columns.setdefault(col, f"when reads old.{col}")
            out.append(needs)
    return out
