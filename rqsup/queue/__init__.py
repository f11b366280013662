"""The Redis data model: producers, admin, events. Never imports rqsup.supervisor."""
