"""The worker's refusals and the typed client's exceptions are one table of error codes.

Each wire error code has exactly one client exception; each refusal the worker's domain
raises carries a wire code, and the client raises the exception of the same name for it
(the one rename: the domain's `InvalidInput` — valid by the schema, not acceptable — is
the client's `InvalidMessage`).
"""

from __future__ import annotations

import inspect

from billing_contracts import client_errors
from billing_contracts.envelope import ErrorCode
from billing_worker.domain import errors as domain

SAME_CODE_OTHER_NAME = {"InvalidInput": "InvalidMessage"}
# Codes the delivery pipeline itself answers with, not a handler's refusal.
PIPELINE_CODES = {ErrorCode.INVALID_MESSAGE, ErrorCode.INTERNAL_ERROR, ErrorCode.FORBIDDEN}


def domain_refusals() -> dict[str, type[domain.BillingError]]:
    return {
        name: cls
        for name, cls in inspect.getmembers(domain, inspect.isclass)
        if issubclass(cls, domain.BillingError) and cls is not domain.BillingError
    }


def test_every_wire_code_has_exactly_one_client_exception() -> None:
    assert set(client_errors.ERRORS) == {code.value for code in ErrorCode}
    for code, exception in client_errors.ERRORS.items():
        assert exception.code == code


def test_every_domain_refusal_is_the_client_exception_of_the_same_code() -> None:
    for name, refusal in domain_refusals().items():
        client = client_errors.ERRORS[refusal.code.value]
        assert client.__name__ == SAME_CODE_OTHER_NAME.get(name, name), (name, client)


def test_every_wire_code_is_raised_by_the_domain_or_answered_by_the_pipeline() -> None:
    raised = {refusal.code for refusal in domain_refusals().values()}
    assert raised | PIPELINE_CODES == set(ErrorCode)
