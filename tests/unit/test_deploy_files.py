"""The deployment files agree with the code: Dockerfile, compose.yaml, .env.example.

No YAML library is a dependency, so compose.yaml is read with a small reader of the
YAML subset it is written in (block mappings and sequences, quoted and plain scalars,
JSON-style flow sequences, anchors, aliases and merge keys); anything else in the file
is an error here rather than a silent misreading.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from billing_worker.cli import build_parser
from billing_worker.settings import FILE_VARIABLES, SECRETS_DIR_ENV, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"

SETTINGS_NAMES = frozenset(f"BILLING_{name.upper()}" for name in Settings.model_fields)
# Read by billing_worker/db/migrate.py itself (the Alembic script directory), and the
# variables that name files holding settings (billing_worker/settings.py): not fields.
NOT_SETTINGS = frozenset({"BILLING_MIGRATIONS_DIR", SECRETS_DIR_ENV, *FILE_VARIABLES})
KNOWN_NAMES = SETTINGS_NAMES | NOT_SETTINGS

BILLING_NAME = re.compile(r"\bBILLING_[A-Z0-9_]+\b")
ENV_ASSIGNMENT = re.compile(r"^#?\s*(BILLING_[A-Z0-9_]+)=(.*)$")
# [registry[:port]/]name:tag[@sha256:digest]; the tag starts with the release's version.
IMAGE = re.compile(
    r"^(?P<name>(?:[a-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9._/-]+)"
    r":(?P<version>[0-9]+(?:\.[0-9]+)*)(?P<variant>-[A-Za-z0-9._-]+)?(?:@sha256:[0-9a-f]{64})?$"
)
# PostgreSQL (since 10) numbers its releases major.minor: 16.13 is an exact release.
TWO_PART_VERSIONS = frozenset({"postgres"})


# ---- a reader of compose.yaml's YAML subset ----


class UnsupportedYaml(ValueError):
    pass


_KEY = re.compile(r"""^(?P<key>[^\s:'"#\[\]{}][^\s:]*|"[^"]*"|'[^']*'):(?:\s+(?P<value>.*))?$""")


def _strip_comment(line: str) -> str:
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()


def _scalar(text: str) -> Any:
    if text.startswith(("[", '"')):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise UnsupportedYaml(f"not a JSON-style flow value: {text}") from error
    if text.startswith("'") and text.endswith("'") and len(text) > 1:
        return text[1:-1].replace("''", "'")
    if text[:1] in ("{", "|", ">", "!", "%", "@", "`"):
        raise UnsupportedYaml(f"unsupported YAML: {text}")
    return text


class _Reader:
    def __init__(self, text: str) -> None:
        self.lines: list[tuple[int, str]] = []
        for raw in text.splitlines():
            if "\t" in raw[: len(raw) - len(raw.lstrip())]:
                raise UnsupportedYaml("tab indentation")
            content = _strip_comment(raw)
            if content.strip() and content.strip() != "---":
                self.lines.append((len(content) - len(content.lstrip()), content.strip()))
        self.anchors: dict[str, Any] = {}
        self.at = 0

    def document(self) -> Any:
        node = self.block(0)
        if self.at != len(self.lines):
            raise UnsupportedYaml(f"unexpected line: {self.lines[self.at][1]}")
        return node

    def block(self, indent: int) -> Any:
        line_indent, content = self.lines[self.at]
        if line_indent != indent:
            raise UnsupportedYaml(f"bad indentation at: {content}")
        if content == "-" or content.startswith("- "):
            return self.sequence(indent)
        return self.mapping(indent)

    def nested(self, indent: int, sequence_allowed_at_same_indent: bool) -> Any:
        """The block under a `key:` or `-` that has no value on its own line."""
        if self.at < len(self.lines):
            next_indent, content = self.lines[self.at]
            if next_indent > indent:
                return self.block(next_indent)
            is_item = content == "-" or content.startswith("- ")
            if sequence_allowed_at_same_indent and next_indent == indent and is_item:
                return self.sequence(indent)
        return None

    def value(self, text: str | None, indent: int, in_mapping: bool) -> Any:
        anchor = None
        if text and text.startswith("&"):
            anchor, _, text = text.partition(" ")
            anchor = anchor[1:]
        if text and text.startswith("*"):
            node = self.anchors[text[1:]]
        elif text:
            node = _scalar(text)
        else:
            node = self.nested(indent, sequence_allowed_at_same_indent=in_mapping)
        if anchor:
            self.anchors[anchor] = node
        return node

    def mapping(self, indent: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        while self.at < len(self.lines) and self.lines[self.at][0] == indent:
            content = self.lines[self.at][1]
            match = _KEY.match(content)
            if match is None or content.startswith("- "):
                break
            self.at += 1
            key = match["key"].strip("\"'")
            node = self.value(match["value"], indent, in_mapping=True)
            if key == "<<":
                if not isinstance(node, dict):
                    raise UnsupportedYaml("merge of a non-mapping")
                merged.update(node)
            elif key in result:
                raise UnsupportedYaml(f"duplicate key: {key}")
            else:
                result[key] = node
        return {**merged, **result}

    def sequence(self, indent: int) -> list[Any]:
        items: list[Any] = []
        while self.at < len(self.lines) and self.lines[self.at][0] == indent:
            content = self.lines[self.at][1]
            if not (content == "-" or content.startswith("- ")):
                break
            item = content[1:].strip()
            if item and _KEY.match(item) and not item.startswith(("*", "&")):
                # "- key: value" opens a mapping whose keys align with "key".
                self.lines[self.at] = (indent + len(content) - len(item), item)
                items.append(self.mapping(self.lines[self.at][0]))
            else:
                self.at += 1
                items.append(self.value(item or None, indent, in_mapping=False))
        return items


def read_yaml(text: str) -> Any:
    return _Reader(text).document()


# ---- readers of the other files ----


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def env_example_assignments() -> dict[str, str]:
    assignments: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := ENV_ASSIGNMENT.match(line.strip()):
            name, value = match.groups()
            assert name not in assignments, f"{name} is set twice in .env.example"
            assignments[name] = value
    return assignments


def compose() -> dict[str, Any]:
    document = read_yaml(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def pinned(image: str) -> bool:
    """Tagged with an exact release (e.g. 3.11.15, not 3.11, 3 or latest)."""
    match = IMAGE.match(image)
    if match is None or "latest" in image:
        return False
    needed = 2 if match["name"].rsplit("/", 1)[-1] in TWO_PART_VERSIONS else 3
    return len(match["version"].split(".")) >= needed


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts, f"not a duration: {duration}"
    assert "".join(n + u for n, u in parts) == duration, f"not a duration: {duration}"
    return sum(float(number) * units[unit] for number, unit in parts)


# ---- the reader itself ----


def test_the_yaml_reader_reads_anchors_merges_flow_lists_and_comments() -> None:
    text = """
x-base: &base
  image: app:1.2.3  # a comment
  environment: &env
    A: "1"
services:
  one:
    <<: *base
    image: other:4.5.6
    environment:
      <<: *env
      B: '2 # not a comment'
    command: ["run", "--fast"]
    env_file:
      - path: .env
        required: false
    ports:
      - "127.0.0.1:15672:15672"
"""
    one = read_yaml(text)["services"]["one"]
    assert one["image"] == "other:4.5.6"
    assert one["environment"] == {"A": "1", "B": "2 # not a comment"}
    assert one["command"] == ["run", "--fast"]
    assert one["env_file"] == [{"path": ".env", "required": "false"}]
    assert one["ports"] == ["127.0.0.1:15672:15672"]


@pytest.mark.parametrize("text", ["a: {b: 1}\n", "a: |\n  text\n", "a: 1\na: 2\n", "a:\n\tb: 1\n"])
def test_the_yaml_reader_refuses_what_it_does_not_understand(text: str) -> None:
    with pytest.raises(UnsupportedYaml):
        read_yaml(text)


# ---- settings named in the deployment files ----


@pytest.mark.parametrize("path", [COMPOSE, ENV_EXAMPLE, DOCKERFILE], ids=lambda p: p.name)
def test_every_billing_variable_in_the_deployment_files_is_a_setting(path: Path) -> None:
    unknown = set(BILLING_NAME.findall(path.read_text())) - KNOWN_NAMES
    assert not unknown, f"{path.name} names variables Settings does not read: {sorted(unknown)}"


def test_every_setting_is_in_the_env_example() -> None:
    missing = SETTINGS_NAMES - set(env_example_assignments())
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_every_env_example_value_is_the_settings_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("BILLING_")]:
        monkeypatch.delenv(name)
    for name, value in env_example_assignments().items():
        field = name.removeprefix("BILLING_").lower()
        default = Settings.model_fields[field].default
        if value == "":
            assert default in (None, ()), f"{name} is empty in .env.example, default {default!r}"
            continue
        documented = getattr(Settings(_env_file=None, **{field: value}), field)
        assert documented == default, f"{name}={value} in .env.example, default {default!r}"


def test_every_env_example_setting_has_a_comment_line_above_it() -> None:
    lines = [line.strip() for line in ENV_EXAMPLE.read_text().splitlines()]
    for index, line in enumerate(lines):
        if ENV_ASSIGNMENT.match(line):
            above = lines[index - 1] if index else ""
            assert above.startswith("# "), f"{line} has no explanation above it"
            assert not ENV_ASSIGNMENT.match(above), f"{line} has no explanation above it"


# ---- Dockerfile ----


def test_the_dockerfile_images_are_pinned_to_a_patch_version() -> None:
    stages: set[str] = set()
    for keyword, arguments in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword != "FROM":
            continue
        image, *alias = arguments.split()
        if image.lower() not in stages:
            assert pinned(image), f"FROM {image} is not pinned to an exact version"
        if alias:
            assert alias[0].upper() == "AS"
            stages.add(alias[1].lower())


def test_the_dockerfile_runs_as_a_non_root_user_with_a_healthcheck() -> None:
    stage = final_stage(dockerfile_instructions(DOCKERFILE.read_text()))
    keywords = [keyword for keyword, _ in stage]
    assert "USER" in keywords, "the final stage sets no USER"
    assert "ENTRYPOINT" in keywords
    user_at = max(i for i, keyword in enumerate(keywords) if keyword == "USER")
    assert user_at < keywords.index("ENTRYPOINT"), "USER must come before ENTRYPOINT"
    user = stage[user_at][1].split(":")[0]
    assert user not in ("root", "0"), "the image must not run as root"
    healthchecks = [arguments for keyword, arguments in stage if keyword == "HEALTHCHECK"]
    assert healthchecks, "the final stage has no HEALTHCHECK"
    assert "NONE" not in healthchecks[-1].upper().split()


def test_the_dockerfile_starts_the_cli_with_the_migrations_inside_the_package() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    stage = final_stage(instructions)
    last = {keyword: value for keyword, value in stage}
    assert json.loads(last["ENTRYPOINT"]) == ["billing-worker"]
    assert json.loads(last["CMD"]) == ["run"]
    # The wheel carries them (pyproject's force-include): no directory to point at.
    assert "BILLING_MIGRATIONS_DIR" not in DOCKERFILE.read_text()
    builder = instructions[: len(instructions) - len(stage)]
    copies = [value.split() for keyword, value in builder if keyword == "COPY"]
    assert ["migrations/", "migrations/"] in copies, "the wheel is built with migrations/"


def test_the_dockerfile_installs_the_hash_checked_lock_then_the_local_packages() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    runs = [value for keyword, value in instructions if keyword == "RUN" and "pip install" in value]
    locked = [index for index, run in enumerate(runs) if "-r requirements.lock" in run]
    assert locked, "no RUN installs requirements.lock"
    assert "--require-hashes" in runs[locked[0]]
    local = [run for run in runs if "./contracts" in run]
    assert local, "the local packages are not installed"
    assert all("--no-deps" in run for run in local), "the local packages must resolve nothing"
    assert runs.index(local[0]) > locked[0]
    assert not [run for run in runs if "[dev]" in run], "no dev tools in the image"


def test_the_dockerfile_labels_the_image_and_exposes_the_relay_and_metrics_ports() -> None:
    stage = final_stage(dockerfile_instructions(DOCKERFILE.read_text()))
    labels = " ".join(value for keyword, value in stage if keyword == "LABEL")
    named = set(re.findall(r"(org\.opencontainers\.image\.[a-z.]+)=", labels))
    required = {"title", "description", "licenses", "version", "revision", "created", "source"}
    assert {f"org.opencontainers.image.{name}" for name in required} <= named, sorted(named)
    exposed = {value for keyword, value in stage if keyword == "EXPOSE"}
    assert exposed == {"8080 9477"}
    assert Settings.model_fields["relay_port"].default == 8080


def test_the_build_context_leaves_out_secrets_and_local_state() -> None:
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".env", ".git", ".venv", "tests"} <= ignored


# ---- compose.yaml ----


def test_the_compose_images_are_pinned_to_a_patch_version() -> None:
    for name, service in services().items():
        image = service.get("image")
        assert image, f"service {name} names no image"
        if "build" in service:
            continue  # built here from this repository's Dockerfile
        assert pinned(image), f"{name}: {image} is not pinned to an exact version"


def test_only_the_relay_publishes_a_port_besides_the_loopback_management_ui() -> None:
    publishing = {name for name, service in services().items() if service.get("ports")}
    assert publishing - {"rabbitmq"} == {"relay"}
    for port in services()["rabbitmq"].get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"rabbitmq publishes {port} beyond localhost"
    assert services()["relay"]["ports"] == ["8080:8080"]


def test_the_worker_can_scale_out() -> None:
    worker = services()["worker"]
    assert "container_name" not in worker
    assert not worker.get("ports")
    assert worker["environment"]["BILLING_METRICS_PORT"] == "9477"  # not node_exporter's 9100


def test_the_worker_and_the_relay_check_their_healthz() -> None:
    ports = {"worker": "9477", "relay": "8080"}
    for name, port in ports.items():
        test = services()[name]["healthcheck"]["test"]
        assert test[0] == "CMD"
        assert "/healthz" in " ".join(test), f"{name} checks no /healthz"
        assert port in " ".join(test)


def test_the_built_services_run_read_only_without_capabilities_or_privilege_gain() -> None:
    for name, service in services().items():
        if "build" not in service:
            continue
        assert service["read_only"] == "true", name
        assert service["tmpfs"] == ["/tmp"], name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name


def compose_secret(name: str) -> str:
    """The content of the file behind a compose secret."""
    declared = compose()["secrets"][name]
    path = ROOT / declared["file"]
    assert path.is_file(), f"secret {name}: {declared['file']} does not exist"
    return path.read_text().strip()


def test_no_credential_is_inline_every_secret_is_a_mounted_file() -> None:
    text = COMPOSE.read_text()
    assert "://" not in re.sub(r"http://127\.0\.0\.1", "", text), "a URL is written inline"
    assert "PASSWORD:" not in text
    for name, service in services().items():
        mounted = set(service.get("secrets", []))
        for variable, value in service.get("environment", {}).items():
            if variable.endswith("_FILE"):
                assert value.startswith("/run/secrets/"), f"{name}: {variable}={value}"
                secret = value.removeprefix("/run/secrets/")
                assert secret in mounted, f"{name} reads {secret} without mounting it"
                assert compose_secret(secret)
                if variable.startswith("BILLING_"):
                    assert variable in FILE_VARIABLES, f"{variable}: Settings reads no such file"
    database = compose_secret("worker-database-url")
    assert f":{compose_secret('postgres-password')}@postgres:" in database


def test_the_worker_starts_after_the_migration_completed() -> None:
    depends_on = services()["worker"]["depends_on"]
    assert depends_on["migrate"]["condition"] == "service_completed_successfully"
    assert depends_on["rabbitmq"]["condition"] == "service_healthy"
    assert services()["migrate"]["restart"] == "no"


def test_the_worker_gets_longer_to_stop_than_its_shutdown_grace() -> None:
    grace = Settings.model_fields["shutdown_grace_seconds"].default
    assert seconds(services()["worker"]["stop_grace_period"]) > grace


def test_every_built_service_runs_an_existing_subcommand_with_its_urls() -> None:
    parser = build_parser()
    built = {name: s for name, s in services().items() if "build" in s}
    assert set(built) == {"migrate", "worker", "relay"}
    for name, service in built.items():
        try:
            parser.parse_args(service["command"])
        except SystemExit:
            pytest.fail(f"{name} runs {service['command']}, not a billing-worker command")
        assert "BILLING_RABBITMQ_URL_FILE" in service["environment"]
        if name != "relay":
            assert "BILLING_DATABASE_URL_FILE" in service["environment"]


# ---- broker users, permissions and the access policy ----

DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
RABBITMQ_CONF = ROOT / "deploy" / "rabbitmq" / "rabbitmq.conf"
ACCESS_POLICY = ROOT / "deploy" / "access-policy.toml"
# What the internet-facing relay may be given: its broker URL, the webhook secret, and
# which proxies to believe. Never the database, nor a provider's API key.
RELAY_MAY_READ = frozenset(
    {"BILLING_RABBITMQ_URL_FILE", "BILLING_STRIPE_WEBHOOK_SECRET", "BILLING_TRUSTED_PROXIES"}
)


def definitions() -> dict[str, Any]:
    document = json.loads(DEFINITIONS.read_text())
    assert isinstance(document, dict)
    return document


def permissions() -> dict[str, dict[str, str]]:
    return {entry["user"]: entry for entry in definitions()["permissions"]}


def broker_url(service: str) -> Any:
    from urllib.parse import urlsplit

    path = services()[service]["environment"]["BILLING_RABBITMQ_URL_FILE"]
    return urlsplit(compose_secret(path.removeprefix("/run/secrets/")))


def allows(pattern: str, name: str) -> bool:
    """RabbitMQ matches a permission regex anywhere in the name (PCRE; Python's re agrees
    on these anchored patterns)."""
    return re.search(pattern, name) is not None


def test_the_relay_gets_only_its_webhook_secrets_and_its_own_broker_user() -> None:
    relay = services()["relay"]
    assert "env_file" not in relay, "the relay must not read .env (provider keys live there)"
    assert set(relay["environment"]) <= RELAY_MAY_READ, sorted(relay["environment"])
    assert relay["secrets"] == ["relay-rabbitmq-url"], "the relay mounts only its broker URL"
    assert broker_url("relay").username != broker_url("worker").username


def test_every_service_url_names_a_defined_user_with_its_dev_password_and_vhost() -> None:
    import base64
    import hashlib

    users = {user["name"]: user for user in definitions()["users"]}
    vhosts = {vhost["name"] for vhost in definitions()["vhosts"]}
    for service in ("worker", "relay", "migrate"):
        url = broker_url(service)
        user = users[url.username]
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        salted = base64.b64decode(user["password_hash"])
        salt, digest = salted[:4], salted[4:]
        assert hashlib.sha256(salt + url.password.encode()).digest() == digest, (
            f"{service}: the password in compose.yaml is not the one hashed for {url.username}"
        )
        assert url.password.startswith("dev-only-"), "compose passwords are marked dev-only"
        assert url.path.lstrip("/") in vhosts
        assert permissions()[url.username]["vhost"] == url.path.lstrip("/")


def test_rabbitmq_loads_the_mounted_definitions() -> None:
    rabbitmq = services()["rabbitmq"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in rabbitmq["volumes"]}
    assert mounts["/etc/rabbitmq/definitions.json"] == "./deploy/rabbitmq/definitions.json"
    conf = [target for target, source in mounts.items() if source.endswith("rabbitmq.conf")]
    assert conf
    assert conf[0].startswith("/etc/rabbitmq/conf.d/")
    settings = dict(
        line.split("=", 1) for line in RABBITMQ_CONF.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )  # fmt: skip
    assert settings["load_definitions "].strip() == "/etc/rabbitmq/definitions.json"
    assert "RABBITMQ_DEFAULT_USER" not in rabbitmq.get("environment", {})


def test_the_roles_have_least_privilege_on_the_exchanges() -> None:
    from billing_contracts import names

    by_user = permissions()
    relay = by_user[broker_url("relay").username]
    worker = by_user[broker_url("worker").username]
    clients = [by_user["storefront"], by_user["orders-service"]]
    callbacks = names.PROVIDER_CALLBACKS_EXCHANGE

    assert allows(relay["write"], callbacks)
    assert not any(allows(relay["write"], name) for name in ("amq.default", "billing.events"))
    assert not allows(relay["configure"], callbacks)
    assert not allows(relay["read"], callbacks)
    assert not allows(relay["configure"], "x")
    assert not allows(relay["read"], "x")
    for client in clients:
        assert allows(client["write"], "amq.default")
        # a NestJS client declares the commands exchange (configure) and publishes there
        assert allows(client["write"], names.COMMANDS_EXCHANGE)
        assert allows(client["configure"], names.COMMANDS_EXCHANGE)
        for exchange in (names.EVENTS_EXCHANGE, names.DEAD_LETTER_EXCHANGE, callbacks):
            assert not allows(client["configure"], exchange), exchange
        assert not allows(client["read"], names.COMMANDS_EXCHANGE)  # binds nothing to it
        assert not allows(client["write"], callbacks)
        assert not allows(client["write"], names.EVENTS_EXCHANGE)
        assert not allows(client["write"], names.DEAD_LETTER_EXCHANGE)
    assert allows(by_user["orders-service"]["write"], names.ORDERS_EXCHANGE)
    assert allows(by_user["orders-service"]["configure"], names.ORDERS_EXCHANGE)
    assert not allows(by_user["storefront"]["configure"], names.ORDERS_EXCHANGE)
    assert not allows(by_user["storefront"]["write"], names.ORDERS_EXCHANGE)
    assert not allows(worker["write"], callbacks)
    assert allows(worker["configure"], names.COMMANDS_EXCHANGE)
    assert allows(worker["read"], names.COMMANDS_EXCHANGE)  # to bind the queues to it
    for name in (
        "amq.default",
        names.COMMANDS_EXCHANGE,
        names.EVENTS_EXCHANGE,
        names.DEAD_LETTER_EXCHANGE,
        "billing.retry.1000ms",
        names.PROVIDER_EVENTS_QUEUE,
        names.DEAD_LETTER_QUEUE,
    ):
        assert allows(worker["write"], name), name  # fmt: skip


def test_the_worker_runs_with_the_mounted_access_policy_naming_defined_users() -> None:
    from billing_contracts import names
    from billing_worker.access import load_policy
    from billing_worker.messaging.topology import ALL_WORK_QUEUES

    worker = services()["worker"]
    path = worker["environment"]["BILLING_ACCESS_POLICY"]
    assert f"./deploy/access-policy.toml:{path}:ro" in worker["volumes"]
    queues = [*ALL_WORK_QUEUES, names.PROVIDER_EVENTS_QUEUE, names.ORDER_CREATED_QUEUE]
    policy = load_policy(ACCESS_POLICY, queues)
    assert set(policy.users) <= {user["name"] for user in definitions()["users"]}
    relay_user = broker_url("relay").username
    senders = {user for user in policy.users if policy.allows(user, names.PROVIDER_EVENTS_QUEUE)}
    assert senders == {relay_user}, "only the relay may send provider callbacks"
    orderers = {user for user in policy.users if policy.allows(user, names.ORDER_CREATED_QUEUE)}
    assert orderers == {"orders-service"}
    planners = {user for user in policy.users if policy.allows(user, names.PLAN_UPSERT)}
    assert planners == {"billing-admin"}
