"""The webhook relay: the only HTTP listener. Verifies provider callbacks, queues them."""
