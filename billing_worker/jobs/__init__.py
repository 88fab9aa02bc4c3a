"""Periodic jobs inside the worker: reconciliation (renewals come with subscriptions)."""
