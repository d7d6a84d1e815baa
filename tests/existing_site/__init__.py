"""A stand-in for a team's existing Django REST framework project, with the apps added as
``docs/installation.md`` says: its own ``REST_FRAMEWORK`` and ``SPECTACULAR_SETTINGS``,
its own endpoints, and ``executions.urls`` mounted under ``/integrations/flows/``.

It imports nothing from ``flowmaestro``; ``tests/test_existing_site.py`` serves it.
"""
