"""Alembic migrations of the registry schema, run programmatically at start
(:func:`services.governance.store_sql.migrate`); no ``alembic.ini`` is needed."""
