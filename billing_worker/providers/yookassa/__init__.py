"""YooKassa: redirect payments and recurring charges, unsigned notifications.

- `gateway`: the `YooKassaGateway` (the official SDK, in worker threads)
- `webhook`: notification bodies, and the networks YooKassa sends them from (YooKassa
  signs nothing: the relay checks the source address, the worker re-reads the object)

This module imports no SDK: the relay loads `webhook` alone.
"""

from __future__ import annotations

NAME = "yookassa"
