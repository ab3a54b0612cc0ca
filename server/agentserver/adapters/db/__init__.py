"""SQLAlchemy 2 (async) storage: SQLite by default, PostgreSQL when configured."""
