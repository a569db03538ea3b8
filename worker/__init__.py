"""worker: the Celery app that runs training jobs over Redis.

Not implemented yet: it is the subject of issue #4.
"""
