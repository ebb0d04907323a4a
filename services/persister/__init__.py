"""The persister: stores every accepted event in PostgreSQL exactly once."""
