"""The ingest service: authenticates writers, validates events and appends them to the stream."""
