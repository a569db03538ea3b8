"""service: the HTTP API (FastAPI, ``service.app``), its Python client (``service.client``) and
the ``chainrule`` command line (``service.cli``, including ``chainrule serve``, which runs the
whole stack: API, Celery worker and, without ``REDIS_URL``, an embedded Redis).

Settings only the API reads are ``service.settings.ApiSettings``; those the API and the
workers share are ``worker.settings.Settings``. Training settings are one
``runtime.TrainingSpec`` from the command line to the worker.
"""
