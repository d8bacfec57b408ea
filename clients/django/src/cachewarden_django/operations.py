"""Migration operations."""

from django.db.migrations.operations.base import Operation


class SetReplicaIdentity(Operation):
    """``ALTER TABLE <model's table> REPLICA IDENTITY <identity>`` (``FULL``, ``DEFAULT``,
    ``NOTHING``), so that the WAL carries the old row's columns cachewarden's rules read.
    Reversed to ``DEFAULT``.

    Usage, in a migration's ``operations``::

        from cachewarden_django.operations import SetReplicaIdentity
        SetReplicaIdentity("course", "FULL")
    """

    reversible = True
    reduces_to_sql = True

    def __init__(self, model_name, identity="FULL"):
        identity = identity.upper()
        if identity not in {"FULL", "DEFAULT", "NOTHING"}:
            raise ValueError(f"identity {identity!r}: expected FULL, DEFAULT or NOTHING")
        self.model_name = model_name
        self.identity = identity

    def state_forwards(self, app_label, state):
        pass

    def _alter(self, schema_editor, model, identity):
        if schema_editor.connection.vendor != "postgresql":
            return
        schema_editor.execute(
            f"ALTER TABLE {schema_editor.quote_name(model._meta.db_table)} REPLICA IDENTITY {identity}"
        )

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            self._alter(schema_editor, model, self.identity)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            self._alter(schema_editor, model, "DEFAULT")

    def describe(self):
        return f"Set REPLICA IDENTITY {self.identity} on {self.model_name}"

    def deconstruct(self):
        return self.__class__.__name__, [self.model_name, self.identity], {}

    @property
    def migration_name_fragment(self):
        return f"replica_identity_{self.model_name.lower()}"
