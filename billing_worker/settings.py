"""The worker's settings: the only place that reads the environment (prefix `BILLING_`)."""

from __future__ import annotations

import ipaddress
import os
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AnyUrl, Field, SecretStr, UrlConstraints, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError


def split_urls(value: str) -> tuple[str, ...]:
    """`BILLING_RABBITMQ_URL` may list several nodes: comma-separated, blanks ignored."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


AmqpUrl = Annotated[AnyUrl, UrlConstraints(allowed_schemes=["amqp", "amqps"])]
# YooKassa's receipt values (providers/yookassa/receipts.py lists the same; a test checks).
PaymentSubject = Literal[
    "commodity", "excise", "job", "service", "gambling_bet", "gambling_prize", "lottery",
    "lottery_prize", "intellectual_activity", "payment", "agent_commission", "composite",
    "another",
]  # fmt: skip
PaymentMode = Literal[
    "full_prepayment", "partial_prepayment", "advance", "full_payment", "partial_payment",
    "credit", "credit_payment",
]  # fmt: skip


# ---- secrets from files ----
#
# The way Docker and Kubernetes hand secrets to a process; both forms are off unless asked for:
# - BILLING_<NAME>_FILE=/path: BILLING_<NAME> is the file's content (surrounding whitespace
#   stripped), for the settings that hold credentials (SECRET_SETTINGS). Compose mounts one
#   file per secret; naming each file keeps a service's credentials explicit.
# - BILLING_SECRETS_DIR=/dir: pydantic-settings' secrets directory; a file named like a
#   setting (billing_database_url, case-insensitive) sets it. A Kubernetes Secret mounted as
#   a volume is such a directory.
# Credentials in files stay out of `docker inspect` and /proc/<pid>/environ. Every way a file
# can be wrong (missing, unreadable, a directory, set twice) is a SettingsError of one line
# naming the variable and the path, which the CLI prints as it is.

PREFIX = "BILLING_"
SECRETS_DIR_ENV = "BILLING_SECRETS_DIR"
FILE_SUFFIX = "_FILE"
# The settings that hold a credential: the only ones a BILLING_<NAME>_FILE may set.
SECRET_SETTINGS = (
    "database_url",
    "rabbitmq_url",
    "stripe_api_key",
    "stripe_webhook_secret",
    "yookassa_account_id",
    "yookassa_secret_key",
)
FILE_VARIABLES = frozenset(f"{PREFIX}{name.upper()}{FILE_SUFFIX}" for name in SECRET_SETTINGS)


def _read(path: Path, variable: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise SettingsError(f"{variable}: {path} does not exist") from None
    except IsADirectoryError:
        raise SettingsError(f"{variable}: {path} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{variable}: {path} is not UTF-8 text") from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise SettingsError(f"{variable}: cannot read {path}: {reason}") from None


class SecretFilesSource(PydanticBaseSettingsSource):
    """``BILLING_<NAME>_FILE``: the content of the named file, for the secret settings."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the files itself

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in SECRET_SETTINGS:
            variable = f"{PREFIX}{name.upper()}"
            path = os.environ.get(variable + FILE_SUFFIX, "").strip()
            if not path:
                continue
            if os.environ.get(variable, "").strip():
                raise SettingsError(
                    f"{variable} and {variable}{FILE_SUFFIX} are both set: keep one of them"
                )
            values[name] = _read(Path(path), variable + FILE_SUFFIX)
        return values


class SecretsDirSource(SecretsSettingsSource):
    """pydantic-settings' secrets directory, named by ``BILLING_SECRETS_DIR``.

    pydantic-settings only warns about a missing directory and lets an unreadable file's
    OSError through; here both are one-line errors, since a secret that silently falls
    back to its default (the local database, guest on the broker) is worse than refusing
    to start.
    """

    def __init__(self, settings_cls: type[BaseSettings], directory: Path) -> None:
        if not directory.is_dir():
            what = "does not exist" if not directory.exists() else "is not a directory"
            raise SettingsError(f"{SECRETS_DIR_ENV}: {directory} {what}")
        try:
            next(iter(directory.iterdir()), None)
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise SettingsError(f"{SECRETS_DIR_ENV}: cannot list {directory}: {reason}") from None
        super().__init__(settings_cls, secrets_dir=directory)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        try:
            return super().get_field_value(field, field_name)
        except OSError as error:
            reason = error.strerror or type(error).__name__
            file = error.filename or field_name
            raise SettingsError(f"{SECRETS_DIR_ENV}: cannot read {file}: {reason}") from None


def file_sources(settings_cls: type[BaseSettings]) -> tuple[PydanticBaseSettingsSource, ...]:
    """The file sources the environment asks for: ``*_FILE`` first, then the directory."""
    sources: list[PydanticBaseSettingsSource] = [SecretFilesSource(settings_cls)]
    if directory := os.environ.get(SECRETS_DIR_ENV, "").strip():
        sources.append(SecretsDirSource(settings_cls, Path(directory)))
    return tuple(sources)


class Settings(BaseSettings):
    """Every setting is documented in the README's settings table."""

    model_config = SettingsConfigDict(
        env_prefix="BILLING_", env_file=".env", extra="ignore", frozen=True
    )

    database_url: SecretStr = Field(
        default=SecretStr("postgresql+asyncpg://postgres@127.0.0.1:5432/billing"),
        description="SQLAlchemy URL of the PostgreSQL database (asyncpg driver)",
    )
    rabbitmq_url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        description="AMQP URL of RabbitMQ, including the vhost; for a cluster, the URLs "
        "of its nodes, comma-separated (tried in order, failed over on a lost connection)",
    )
    access_policy: Path | None = Field(
        default=None,
        description="TOML file mapping broker users to the queues they may send to; "
        "unset = off (any broker user may send anything)",
    )
    orders_exchange: str = Field(
        default="orders", min_length=1, description="Topic exchange of the Orders service"
    )
    default_provider: Literal["sandbox", "stripe", "yookassa"] | None = Field(
        default=None,
        description="Provider for deposits that name none; by default Stripe, else YooKassa, "
        "else the sandbox when it is enabled",
    )
    sandbox_enabled: bool = Field(
        default=False,
        description="Offer the built-in sandbox provider (development and tests only; "
        "refused together with live Stripe or YooKassa keys)",
    )
    stripe_api_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str | None = Field(default=None, description="Override of Stripe's API URL")
    yookassa_account_id: str | None = None
    yookassa_secret_key: SecretStr | None = None
    yookassa_api_url: str | None = Field(default=None, description="Override of YooKassa's API URL")
    yookassa_receipts: bool = Field(
        default=False,
        description="Send a 54-FZ receipt with every YooKassa payment (shops with fiscalization)",
    )
    yookassa_vat_code: int = Field(
        default=1, ge=1, le=12, description="Receipt items' vat_code unless the plan sets one"
    )
    yookassa_payment_subject: PaymentSubject = Field(
        default="service", description="Receipt items' payment_subject"
    )
    yookassa_payment_mode: PaymentMode = Field(
        default="full_payment", description="Receipt items' payment_mode"
    )
    yookassa_deposit_description: str = Field(
        default="Balance top-up",
        min_length=1,
        max_length=128,
        description="The receipt item of a deposit",
    )
    yookassa_setup_amount: Decimal = Field(
        default=Decimal("1.00"), gt=0, max_digits=12, decimal_places=2,
        description="What a YooKassa card setup holds and then cancels (never taken)",
    )  # fmt: skip
    yookassa_setup_currency: str = Field(
        default="RUB", pattern=r"^[A-Z]{3}$", description="The currency of a card setup's hold"
    )
    provider_timeout_seconds: float = Field(default=20.0, gt=0, le=300)
    stripe_webhook_tolerance_seconds: int = Field(default=300, ge=1, le=3600)
    yookassa_allowed_networks: Annotated[tuple[str, ...] | None, NoDecode] = Field(
        default=None,
        description="Comma-separated CIDRs YooKassa notifications may come from; unset = "
        "YooKassa's published networks (billing_worker.providers.yookassa.webhook)",
    )
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Comma-separated CIDRs of reverse proxies whose X-Forwarded-For is believed",
    )
    dunning_days: Annotated[tuple[int, ...], NoDecode] = Field(
        default=(1, 3, 5),
        description="Days after a failed renewal to retry the charge (comma-separated); "
        "the subscription is canceled after the last failure",
    )
    renewal_interval_seconds: float = Field(default=60.0, gt=0)
    reconcile_after_seconds: int = Field(default=900, ge=1)
    reconcile_interval_seconds: float = Field(default=60.0, gt=0)
    payment_expire_after_seconds: int = Field(
        default=86400,
        ge=1,
        description="Seconds after which a payment still processing is canceled at its "
        "provider by the reconciler (payment.failed, failure_code expired)",
    )

    idempotency_retention_days: int = Field(
        default=30,
        ge=0,
        le=36500,
        description="Days a command's idempotency record (its stored reply) is kept; "
        "provider-event claims are kept at least 7 days whatever this says",
    )
    outbox_retention_days: int = Field(
        default=7,
        ge=0,
        le=36500,
        description="Days a published outbox row is kept (unpublished rows are never deleted)",
    )
    retention_interval_seconds: float = Field(
        default=3600.0, gt=0, description="How often each worker deletes what retention allows"
    )
    retention_batch_size: int = Field(
        default=1000, ge=1, le=10000, description="Rows per retention DELETE statement"
    )
    retention_pause_ms: int = Field(
        default=100, ge=0, le=60000, description="Pause between two retention batches"
    )
    hold_expiry_interval_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="How often each worker releases expired holds"
    )
    hold_expiry_batch_size: int = Field(
        default=100, ge=1, le=10000, description="Expired holds released per transaction"
    )
    invoice_overdue_interval_seconds: float = Field(
        default=60.0, gt=0, le=86400,
        description="How often each worker announces open invoices past their due_at",
    )  # fmt: skip
    invoice_overdue_batch_size: int = Field(
        default=100, ge=1, le=10000, description="Overdue invoices announced per transaction"
    )
    credit_without_policy: bool = Field(
        default=False,
        description="Let any broker user send billing.wallet.credit, billing.plan.migrate, "
        "billing.tax-rate.upsert and billing.coupon.upsert while BILLING_ACCESS_POLICY is "
        "unset (local development only; refused together with a policy)",
    )
    dead_letter_max: int = Field(
        default=100_000,
        ge=1,
        le=100_000_000,
        description="Most dead letters billing.dead-letter holds; beyond, the oldest are dropped",
    )

    max_deliveries: int = Field(default=5, ge=1, le=100)
    retry_delays_ms: Annotated[tuple[int, ...], NoDecode] = Field(
        default=(1000, 5000, 30000, 120000),
        description="Back-off before each redelivery of a transiently failed message, "
        "comma-separated milliseconds; the last one repeats",
    )
    prefetch: int = Field(default=32, ge=1, le=1000)
    coalesce_max: int = Field(
        default=32,
        ge=1,
        le=1000,
        description="Most commands of one kind (withdrawals, invoice pays from the balance, "
        "provider callbacks, balance queries) handled together in one database round "
        "(1 turns coalescing off)",
    )
    db_pool_size: int = Field(default=16, ge=1, le=200)
    quorum_queues: bool = False
    low_balance_threshold: Decimal = Field(default=Decimal("10.00"), ge=0, max_digits=20)
    outbox_poll_interval_ms: int = Field(default=1000, ge=10)
    outbox_batch_size: int = Field(default=200, ge=1, le=10000)
    relay_host: str = "0.0.0.0"  # noqa: S104 - the relay is the service's HTTP listener
    relay_port: int = Field(default=8080, ge=1, le=65535)
    relay_header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Time a webhook connection gets to send a complete request head (from "
        "connecting, or from the previous answer on a kept-alive connection); then it is closed",
    )
    relay_body_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Time a webhook request gets to send its whole body; then 408 and closed",
    )
    relay_max_connections: int = Field(
        default=200,
        ge=1,
        le=100_000,
        description="Open connections (or requests in progress) beyond which the relay "
        "answers 503 at once",
    )
    relay_keep_alive_seconds: int = Field(
        default=5,
        ge=1,
        le=300,
        description="How long an idle kept-alive webhook connection stays open",
    )
    watchdog_interval_seconds: float = Field(
        default=2.0, gt=0, le=60, description="How often the watchdog probes every part"
    )
    watchdog_max_restarts: int = Field(
        default=5, ge=1, le=100, description="Restarts of one part per window before exiting"
    )
    watchdog_restart_window_seconds: float = Field(default=300.0, gt=0)
    watchdog_consumer_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long a consumer may stay missing (aio-pika restores it) before a restart",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Internal /metrics, /healthz, /livez port: 9477 (node_exporter has 9100); "
        "unset = no listener",
    )
    metrics_host: str = "0.0.0.0"  # noqa: S104 - internal port, not published by compose
    metrics_sample_seconds: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="How often the worker samples queue depths, the outbox and stuck payments "
        "for /metrics",
    )
    shutdown_grace_seconds: float = Field(
        default=30.0, gt=0, le=600, description="Time in-flight messages get to finish on SIGTERM"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"
    otel_endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="OpenTelemetry collector base URL (OTLP over HTTP, /v1/traces is added); "
        "unset, the standard OTEL_* variables decide, and without them tracing is off",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment, then secrets from files (billing_worker.secret_files), then .env."""
        return (init_settings, env_settings, *file_sources(settings_cls), dotenv_settings)

    @field_validator("access_policy", "otel_endpoint", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("rabbitmq_url")
    @classmethod
    def _broker_urls(cls, value: SecretStr) -> SecretStr:
        urls = split_urls(value.get_secret_value())
        if not urls:
            raise ValueError("needs at least one amqp:// or amqps:// URL")
        parsed = [urlsplit(url) for url in urls]
        for position, url in enumerate(parsed, 1):
            if url.scheme not in ("amqp", "amqps") or not url.hostname:
                raise ValueError(f"URL {position} is not an amqp:// or amqps:// URL with a host")
        # One cluster, one identity: the worker publishes with its login as the validated
        # user_id, and its queues live in one vhost, whichever node it is connected to.
        if len({(url.username or "guest", url.path.removeprefix("/")) for url in parsed}) > 1:
            raise ValueError("every URL must name the same user and the same vhost")
        return value

    @field_validator("retry_delays_ms", "dunning_days", mode="before")
    @classmethod
    def _split_delays(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(int(part) for part in value.split(",") if part.strip())
        return value

    @field_validator("yookassa_allowed_networks", "trusted_proxies", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("yookassa_allowed_networks", "trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for cidr in value or ():
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad one
        return value

    @field_validator("retry_delays_ms")
    @classmethod
    def _delays_positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(delay < 1 for delay in value):
            raise ValueError("needs at least one delay, each at least 1 ms")
        return value

    @field_validator("dunning_days")
    @classmethod
    def _dunning_increasing(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(day < 1 for day in value) or list(value) != sorted(set(value)):
            raise ValueError("needs increasing whole days, each at least 1")
        return value

    @model_validator(mode="after")
    def _sandbox_only_in_test_mode(self) -> Settings:
        live = []
        stripe_key = self.stripe_api_key.get_secret_value() if self.stripe_api_key else ""
        if stripe_key.startswith(("sk_live_", "rk_live_")):
            live.append("BILLING_STRIPE_API_KEY is a live key")
        yookassa_key = (
            self.yookassa_secret_key.get_secret_value() if self.yookassa_secret_key else ""
        )
        if yookassa_key and not yookassa_key.startswith("test_"):
            live.append("BILLING_YOOKASSA_SECRET_KEY is not a test_ key")
        if self.sandbox_enabled and live:
            raise ValueError(
                "BILLING_SANDBOX_ENABLED=true is refused with live provider keys "
                f"({'; '.join(live)})"
            )
        if self.credit_without_policy and self.access_policy is not None:
            raise ValueError(
                "BILLING_CREDIT_WITHOUT_POLICY=true is for development without "
                "BILLING_ACCESS_POLICY; with a policy, name billing.wallet.credit in it"
            )
        if self.default_provider == "sandbox" and not self.sandbox_enabled:
            raise ValueError("BILLING_DEFAULT_PROVIDER=sandbox needs BILLING_SANDBOX_ENABLED=true")
        return self

    @property
    def database_dsn(self) -> str:
        return self.database_url.get_secret_value()

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """Every broker address, in the order they are tried."""
        return split_urls(self.rabbitmq_url.get_secret_value())

    @property
    def amqp_url(self) -> str:
        """The first broker address (the login and vhost are the same in every one)."""
        return self.amqp_urls[0]

    @property
    def provider_for_deposits(self) -> str | None:
        if self.default_provider:
            return self.default_provider
        if self.stripe_api_key:
            return "stripe"
        if self.yookassa_secret_key:
            return "yookassa"
        return "sandbox" if self.sandbox_enabled else None
