"""The web dashboard (``rqsup[dashboard]``): see rqsup.dashboard.app."""

from rqsup.dashboard.app import create_app

__all__ = ["create_app"]
