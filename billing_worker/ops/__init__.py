"""Operator tools behind the CLI: dead letters, the outbox, the ledger audit, the demo."""
