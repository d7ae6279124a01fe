"""Celery app, tasks and beat schedule. Only the Celery worker imports this package."""
