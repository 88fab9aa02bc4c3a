"""Periodic jobs inside the worker: reconciliation, retention (renewals come with subscriptions)."""
