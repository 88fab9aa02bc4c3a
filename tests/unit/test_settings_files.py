"""Secrets from files: BILLING_<NAME>_FILE and BILLING_SECRETS_DIR, and their one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic_settings import SettingsError

from billing_worker.cli import main
from billing_worker.settings import FILE_VARIABLES, SECRET_SETTINGS, SECRETS_DIR_ENV, Settings

URL = "postgresql+asyncpg://billing:from-a-file@db.internal:5432/billing"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [name for name in os.environ if name.startswith("BILLING_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env of the checkout


def settings() -> Settings:
    return Settings(_env_file=None)


def test_a_file_variable_sets_the_secret_from_the_file_without_its_newline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "database-url"
    secret.write_text(URL + "\n")
    monkeypatch.setenv("BILLING_DATABASE_URL_FILE", str(secret))
    assert settings().database_dsn == URL


def test_every_secret_setting_has_a_file_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values = {
        "database_url": URL,
        "rabbitmq_url": "amqp://worker:pw@broker:5672/billing",
        "stripe_api_key": "sk_test_from_file",
        "stripe_webhook_secret": "whsec_from_file",
        "yookassa_account_id": "123456",
        "yookassa_secret_key": "test_from_file",
    }
    assert set(values) == set(SECRET_SETTINGS)
    for name, value in values.items():
        (tmp_path / name).write_text(value)
        monkeypatch.setenv(f"BILLING_{name.upper()}_FILE", str(tmp_path / name))
    loaded = settings()
    for name, value in values.items():
        field = getattr(loaded, name)
        assert (field if isinstance(field, str) else field.get_secret_value()) == value


def test_a_secrets_directory_sets_any_setting_named_by_its_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    directory = tmp_path / "secrets"
    directory.mkdir()
    (directory / "billing_database_url").write_text(URL + "\n")
    (directory / "BILLING_STRIPE_API_KEY").write_text("sk_test_dir")
    monkeypatch.setenv(SECRETS_DIR_ENV, str(directory))
    loaded = settings()
    assert loaded.database_dsn == URL
    assert loaded.stripe_api_key is not None
    assert loaded.stripe_api_key.get_secret_value() == "sk_test_dir"


def test_a_kubernetes_secret_volume_with_its_symlinks_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The kubelet writes the keys into a timestamped directory and links them."""
    directory = tmp_path / "secrets"
    data = directory / "..2026_12_02_14_00_00.000000001"
    data.mkdir(parents=True)
    (data / "billing_database_url").write_text(URL)
    (directory / "..data").symlink_to(data.name)
    (directory / "billing_database_url").symlink_to("..data/billing_database_url")
    monkeypatch.setenv(SECRETS_DIR_ENV, str(directory))
    assert settings().database_dsn == URL


def test_the_environment_beats_the_secrets_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "billing_database_url").write_text(URL)
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("BILLING_DATABASE_URL", "postgresql+asyncpg://env@h/db")
    assert settings().database_dsn == "postgresql+asyncpg://env@h/db"


def test_a_variable_and_its_file_variable_together_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "url").write_text(URL)
    monkeypatch.setenv("BILLING_DATABASE_URL_FILE", str(tmp_path / "url"))
    monkeypatch.setenv("BILLING_DATABASE_URL", URL)
    with pytest.raises(SettingsError, match="both set"):
        settings()


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda path: None, "does not exist"),
        (lambda path: path.mkdir(), "is a directory"),
        (lambda path: path.write_bytes(b"\xff\xfe\xfa"), "is not UTF-8"),
    ],
    ids=["missing", "directory", "binary"],
)
def test_a_bad_file_is_a_one_line_error_naming_the_variable_and_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, make: object, says: str
) -> None:
    path = tmp_path / "stripe-key"
    make(path)  # type: ignore[operator]
    monkeypatch.setenv("BILLING_STRIPE_API_KEY_FILE", str(path))
    with pytest.raises(SettingsError) as raised:
        settings()
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("BILLING_STRIPE_API_KEY_FILE: ")
    assert str(path) in message
    assert says in message


def test_a_file_that_cannot_be_opened_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Any OSError (here ENOTDIR: a path through a file), not only a missing file."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("BILLING_DATABASE_URL_FILE", str(tmp_path / "a-file" / "url"))
    with pytest.raises(SettingsError, match=r"^BILLING_DATABASE_URL_FILE: cannot read .*: Not a"):
        settings()


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_secrets_directory_that_is_not_one_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "secrets"
    if kind == "file":
        path.write_text("")
    monkeypatch.setenv(SECRETS_DIR_ENV, str(path))
    with pytest.raises(SettingsError, match=f"^{SECRETS_DIR_ENV}: .* (does not exist|is not a)"):
        settings()


def test_the_cli_prints_a_bad_secret_file_as_one_line_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BILLING_DATABASE_URL_FILE", str(tmp_path / "nowhere"))
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "BILLING_DATABASE_URL_FILE" in err
    assert str(tmp_path / "nowhere") in err


def test_the_file_variables_are_named_after_settings() -> None:
    for variable in FILE_VARIABLES:
        field = variable.removeprefix("BILLING_").removesuffix("_FILE").lower()
        assert field in Settings.model_fields
