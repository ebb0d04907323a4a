"""Common code of the Rankstream services: settings, names, schemas and servers."""
