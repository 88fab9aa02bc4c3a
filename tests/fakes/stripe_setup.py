"""SetupIntents, PaymentMethods (retrieve, detach) and the customer's default payment
method, for `FakeStripe` (a mixin: it shares the fake's state and helpers).

As at Stripe: a SetupIntent for a customer starts `requires_payment_method` with a
`client_secret`; the customer confirms it in the browser (here `fake.confirm_setup`),
which attaches the card to that customer and makes the SetupIntent `succeeded` with
its `payment_method`. Detaching a method not attached to a customer is a 400; a
customer's `invoice_settings.default_payment_method` must be one of its own methods.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Callable
from typing import Any

from fakes import stripe_api as api  # which mixes this in (a cycle: used at call time)

JSON = dict[str, Any]
SETUP_INTENT_PARAMS = (
    "customer", "usage", "metadata", "automatic_payment_methods", "payment_method_types",
    "description", "payment_method", "confirm", "return_url",
)  # fmt: skip


class SetupIntents:
    """Mixed into `FakeStripe`; `setup_intents` holds the SetupIntents by id."""

    setup_intents: dict[str, JSON]
    customers: dict[str, JSON]
    attached_methods: dict[str, str]
    detached_methods: set[str]  # saved once, detached since
    _lock: Any
    now: Callable[[], int]
    _store: Callable[[dict[str, JSON], JSON], JSON]
    _attach: Callable[[str, str], JSON]
    _payment_method_object: Callable[[str], JSON]
    _customer_param: Callable[[JSON], str | None]

    def _setup_routes(self) -> list[tuple[str, str, Callable[..., JSON]]]:

        def retrieve_setup(params: JSON, id: str) -> JSON:
            if id not in self.setup_intents:
                raise api.no_such("setup_intent", id)
            return self.setup_intents[id]

        def retrieve_method(params: JSON, id: str) -> JSON:
            known = {*self.attached_methods, *self.detached_methods, *api.TEST_CARDS}
            if id not in known:
                raise api.no_such("payment_method", id)
            return self._payment_method_object(id)

        return [
            ("POST", r"/v1/setup_intents", self._create_setup_intent),
            ("GET", r"/v1/setup_intents/(?P<id>[^/]+)", retrieve_setup),
            ("GET", r"/v1/payment_methods/(?P<id>[^/]+)", retrieve_method),
            ("POST", r"/v1/payment_methods/(?P<id>[^/]+)/detach", self._detach_payment_method),
            ("POST", r"/v1/customers/(?P<id>[^/]+)", self._update_customer),
        ]

    def confirm_setup(self, seti_id: str, test_card: str = "pm_card_visa") -> str:
        """The customer confirms the SetupIntent with `test_card`: the card is saved for
        the SetupIntent's customer and the SetupIntent succeeds; the new method's id. A
        card that needs 3-D Secure leaves it `requires_action` with that (unsaved) card."""
        with self._lock:
            seti = self.setup_intents[seti_id]
            if seti["status"] == "succeeded":
                return str(seti["payment_method"])
            if api.card_for(test_card).outcome == "authenticate":
                action = {"type": "use_stripe_sdk", "use_stripe_sdk": {}}
                seti.update(status="requires_action", payment_method=test_card, next_action=action)
                return test_card
            seti["next_action"] = None
            method = str(self._attach(test_card, seti["customer"])["id"])
            seti.update(status="succeeded", payment_method=method)
            return method

    def _create_setup_intent(self, params: JSON) -> JSON:

        api.check_params(params, SETUP_INTENT_PARAMS)
        customer = self._customer_param(params)
        seti_id = api.new_id("seti_")
        apm = params.get("automatic_payment_methods")
        return self._store(
            self.setup_intents,
            {
                "id": seti_id, "object": "setup_intent", "application": None,
                "automatic_payment_methods": (
                    {"allow_redirects": "always", "enabled": True} if apm else None
                ),
                "cancellation_reason": None,
                "client_secret": f"{seti_id}_secret_{secrets.token_hex(12)}",
                "created": self.now(), "customer": customer,
                "description": params.get("description"), "flow_directions": None,
                "last_setup_error": None, "latest_attempt": None, "livemode": False,
                "mandate": None, "metadata": api.merge_metadata({}, params.get("metadata")),
                "next_action": None, "on_behalf_of": None, "payment_method": None,
                "payment_method_types": ["card"], "single_use_mandate": None,
                "status": "requires_payment_method",
                "usage": params.get("usage") or "off_session",
            },
        )  # fmt: skip

    def _detach_payment_method(self, params: JSON, id: str) -> JSON:

        api.check_params(params, ())
        if id not in self.attached_methods:
            raise api.invalid_request(
                "The payment method you provided is not attached to a customer so detachment "
                "is impossible.",
                param="payment_method",
            )
        customer = self.attached_methods.pop(id)
        self.detached_methods.add(id)
        settings = self.customers[customer]["invoice_settings"]
        if settings.get("default_payment_method") == id:
            settings["default_payment_method"] = None
        return self._payment_method_object(id)

    def _update_customer(self, params: JSON, id: str) -> JSON:

        api.check_params(params, ("invoice_settings", "metadata", "email", "name", "description"))
        if id not in self.customers:
            raise api.no_such("customer", id)
        customer = self.customers[id]
        settings = params.get("invoice_settings") or {}
        if "default_payment_method" in settings:
            method = settings["default_payment_method"] or None
            if method is not None and self.attached_methods.get(method) != id:
                raise api.invalid_request(
                    f"No such PaymentMethod: '{method}'; It's possible this PaymentMethod "
                    "exists on one of your connected accounts, in which case you should retry "
                    "this request on that connected account.",
                    param="invoice_settings[default_payment_method]",
                )
            customer["invoice_settings"]["default_payment_method"] = method
        for field in ("email", "name", "description"):
            if field in params:
                customer[field] = params[field]
        return copy.deepcopy(customer)
