"""The saved method a deposit or a subscription charges when the command names none.

A command's own `payment_method_id` wins; without one, the user's live default method
at the provider is charged as a saved method (YooKassa: a recurring charge, no
redirect; Stripe: the PaymentIntent confirmed off-session with it, or the
subscription's `default_payment_method`). A detached method is never a default. With
no default the command takes the customer's path as before (client_secret, redirect).
"""

from __future__ import annotations

from billing_worker.ports import UnitOfWork


async def method_for(
    uow: UnitOfWork, user_id: str, provider: str, named: str | None
) -> tuple[str | None, bool]:
    """(the method to charge, whether it is the user's default taken for want of one)."""
    if named:
        return named, False
    default = await uow.methods.default_of(user_id, provider)
    return (default.ref, True) if default is not None else (None, False)
