"""The fields YooKassa receipts (54-FZ) need on commands: the customer's contact and the
VAT code of what is sold. All optional and additive: a command without them hashes as
it did before they existed (`exclude_if`), so its idempotency record still matches."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints


def _check_email(value: str) -> str:
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or any(char.isspace() for char in value):
        raise ValueError("email must look like name@domain")
    return value


def _absent(value: Any) -> bool:
    return value is None


ReceiptEmail = Annotated[str, StringConstraints(max_length=320), AfterValidator(_check_email)]
# ITU-T E.164, as YooKassa takes it: the country code and number, digits only.
ReceiptPhone = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{6,14}$")]
# YooKassa's vat_code (tag 1199 of 54-FZ): 1-12 (1 = no VAT, 2 = 0 %, 3.. the rates).
VatCode = Annotated[int, Field(ge=1, le=12, strict=True)]


def customer_email_field() -> Any:
    return Field(
        default=None,
        exclude_if=_absent,
        description="YooKassa receipts: the e-mail the receipt goes to (else the one stored "
        "for the user by `billing.subscription.create`)",
        examples=["ada@example.com"],
    )


def customer_phone_field() -> Any:
    return Field(
        default=None,
        exclude_if=_absent,
        description="YooKassa receipts: the phone the receipt goes to, E.164 digits "
        "without `+`, when there is no e-mail",
        examples=["79001234567"],
    )


def vat_code_field(what: str) -> Any:
    return Field(
        default=None,
        exclude_if=_absent,
        description=f"YooKassa receipts: the vat_code of {what} (1-12); unset = "
        "`BILLING_YOOKASSA_VAT_CODE`",
        examples=[1],
    )
