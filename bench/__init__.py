"""The ``make bench`` harness: load generators, phases and the report, run against a fresh ``rankstream up``."""
