"""PostgreSQL persistence: schema, migrations and the money-path SQL."""
