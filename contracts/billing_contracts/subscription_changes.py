"""Changing a live subscription: resume after a period-end cancel, pause and unpause.

Each replies with the subscription (`SubscriptionOut`).
"""

from __future__ import annotations

from uuid import UUID

from pydantic import AwareDatetime, Field

from billing_contracts.envelope import Command
from billing_contracts.wallet import UserId

_OWNER = (
    "The user the subscription belongs to; another user's subscription is answered "
    "`not_found`, exactly as an id that does not exist"
)


class ResumeSubscription(Command):
    """`billing.subscription.resume`: undo a period-end cancel while the period runs."""

    user_id: UserId = Field(description=_OWNER)
    subscription_id: UUID


class PauseSubscription(Command):
    """`billing.subscription.pause`: stop renewals (and dunning) until unpaused.

    Balance and YooKassa subscriptions serve the paid period first: the pause takes
    effect at its end (a `past_due` one pauses at once). Stripe pauses collection at once.
    """

    user_id: UserId = Field(description=_OWNER)
    subscription_id: UUID
    until: AwareDatetime | None = Field(
        default=None,
        description="When to unpause by itself (a future instant); absent: paused until "
        "`billing.subscription.unpause`",
        examples=["2027-01-15T00:00:00Z"],
    )


class UnpauseSubscription(Command):
    """`billing.subscription.unpause`: run a paused subscription again (or drop a pause
    that has not taken effect yet)."""

    user_id: UserId = Field(description=_OWNER)
    subscription_id: UUID
