"""The search web service (FastAPI): JSON API, indexed images, explanations and a web page."""
from __future__ import annotations

from ivt.serve.app import create_app, load_service

__all__ = ["create_app", "load_service"]
