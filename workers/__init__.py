"""Celery adapters. ``celery -A workers flower`` serves the dashboard for the whole federation."""

from workers.app import app

__all__ = ["app"]
