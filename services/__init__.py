"""The Rankstream services: ingest, ranker, persister and gateway, and the ``rankstream`` command."""
