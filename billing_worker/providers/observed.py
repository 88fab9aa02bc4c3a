"""Every payment provider call, measured and traced in one place.

A gateway method decorated with `@observed("create_payment")` runs inside a span
`provider <name> <operation>` (when tracing is on, billing_worker/tracing.py) and is
timed into `billing_provider_call_seconds{provider, operation, outcome}` of the
gateway's worker (`attach` gives each gateway its worker's histogram; a gateway never
attached is traced, not measured). The labels come from fixed sets: `provider` is one
of PROVIDERS (else `other`), `operation` one of OPERATIONS (checked when the method is
decorated), and `outcome`:

- `ok`: the provider answered and what it answered was no refusal;
- `refused`: the provider said no (`ProviderError`, or a payment it answered `failed`):
  a card declined, a refund refused — the customer's or the request's business;
- `error`: no usable answer (unreachable, timed out, 5xx, a bug): the operator's.

A call made inside another observed call (Stripe's `confirm` reading a setup) is part
of it: neither measured nor traced a second time.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from opentelemetry.trace import SpanKind
from prometheus_client import Histogram

from billing_worker import tracing
from billing_worker.domain.errors import ProviderError
from billing_worker.providers.base import Gateways, PaymentResult, PaymentStatus

P = ParamSpec("P")
R = TypeVar("R")
Method = Callable[P, Coroutine[Any, Any, R]]  # an async method: protocols expect coroutines

PROVIDERS = frozenset({"sandbox", "stripe", "yookassa"})
OPERATIONS = frozenset(
    {
        "create_customer",
        "create_payment",
        "fetch_payment",
        "cancel_payment",
        "refund",
        "fetch_refund",
        "confirm",
        "create_subscription",
        "cancel_subscription",
        "change_subscription",
        "fetch_subscription",
        "start_setup",
        "confirm_setup",
        "detach_method",
        "make_default",
        "set_subscription_method",
    }
)
OUTCOMES = ("ok", "refused", "error")
OTHER = "other"
HISTOGRAM_ATTRIBUTE = "_observed_calls"  # where `attach` leaves a gateway's histogram

_inside: ContextVar[bool] = ContextVar("inside_provider_call", default=False)


def outcome_of(result: object) -> str:
    """`refused` for a payment the provider answered `failed`, else `ok`."""
    if isinstance(result, PaymentResult) and result.status is PaymentStatus.FAILED:
        return "refused"
    return "ok"


def provider_label(name: object) -> str:
    return name if isinstance(name, str) and name in PROVIDERS else OTHER


def observed(
    operation: str,
) -> Callable[[Method[P, R]], Method[P, R]]:
    """Decorate a gateway's async method (its first argument is the gateway)."""
    if operation not in OPERATIONS:
        raise ValueError(f"{operation!r} is not one of observed.OPERATIONS")

    def decorate(method: Method[P, R]) -> Method[P, R]:
        @functools.wraps(method)
        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            if _inside.get():
                return await method(*args, **kwargs)
            gateway = args[0]
            provider = provider_label(getattr(gateway, "name", None))
            histogram: Histogram | None = getattr(gateway, HISTOGRAM_ATTRIBUTE, None)
            token = _inside.set(True)
            outcome = "error"
            started = time.perf_counter()
            try:
                with tracing.span(
                    f"provider {provider} {operation}",
                    {"billing.provider": provider, "billing.provider.operation": operation},
                    kind=SpanKind.CLIENT,
                ) as span:
                    try:
                        result = await method(*args, **kwargs)
                    except ProviderError:
                        outcome = "refused"
                        raise
                    outcome = outcome_of(result)
                    if span is not None:
                        span.set_attribute("billing.provider.outcome", outcome)
                    return result
            finally:
                _inside.reset(token)
                if histogram is not None:
                    elapsed = time.perf_counter() - started
                    histogram.labels(provider, operation, outcome).observe(elapsed)

        return call

    return decorate


def attach(gateways: Gateways, histogram: Histogram) -> None:
    """Give every configured gateway the worker's `billing_provider_call_seconds`."""
    for name in gateways.names:
        gateway: Any = gateways.get(name)
        try:
            setattr(gateway, HISTOGRAM_ATTRIBUTE, histogram)
        except AttributeError:  # a __slots__ test double: traced, not measured
            continue
