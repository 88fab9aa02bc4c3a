"""deploy/kubernetes agrees with the Kubernetes API and with the code.

Every manifest (the base's files, and the example overlay rendered by `kubectl kustomize`
where kubectl is installed) is validated against the API's JSON schemas, strictly (an
unknown field fails), with kubernetes-validate (bundled schemas, offline). KEDA's
objects are custom resources it has no schema for: checked here structurally. Every
setting they set must be one Settings reads, and the queues KEDA watches must exist.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from billing_contracts import names
from billing_worker.messaging.topology import ALL_WORK_QUEUES
from billing_worker.settings import SECRETS_DIR_ENV, Settings

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAY = KUBERNETES / "overlays" / "example"
API_VERSION = "1.32.0"
SETTING_NAMES = frozenset(f"BILLING_{name.upper()}" for name in Settings.model_fields)
KEDA = "keda.sh/v1alpha1"
KUSTOMIZE = "kustomize.config.k8s.io/v1beta1"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def base_objects() -> list[dict[str, Any]]:
    kustomization = documents(BASE / "kustomization.yaml")[0]
    return [doc for file in kustomization["resources"] for doc in documents(BASE / file)]


def rendered_overlay() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the overlay is not rendered")
    rendered = subprocess.run(  # noqa: S603 - kubectl on our own files
        [kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc is not None]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def validate(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        if obj["apiVersion"] == KEDA:
            continue  # a CRD: test_the_scaled_object_*
        try:
            kubernetes_validate.validate(obj, API_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {error.message}")


def test_every_file_of_the_base_is_a_resource_of_its_kustomization() -> None:
    kustomization = documents(BASE / "kustomization.yaml")[0]
    assert kustomization["apiVersion"] == KUSTOMIZE
    listed = set(kustomization["resources"])
    on_disk = {path.name for path in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    assert "namespace" not in kustomization, "the base is namespace-agnostic"


def test_the_base_manifests_validate_against_the_kubernetes_schemas() -> None:
    validate(base_objects())


def test_the_rendered_overlay_validates_and_sets_namespace_image_and_replicas() -> None:
    objects = rendered_overlay()
    validate(objects)
    namespaced = [o for o in objects if o["kind"] != "Namespace"]
    assert {o["metadata"].get("namespace") for o in namespaced} == {"billing"}
    images = {
        container["image"]
        for o in objects
        if o["kind"] in ("Deployment", "Job")
        for container in o["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"registry.example.com/billing-worker:0.1.0"}
    assert by_kind(objects, "Deployment")["billing-relay"]["spec"]["replicas"] == 3
    worker = by_kind(objects, "Deployment")["billing-worker"]["spec"]["template"]["spec"]
    assert worker["containers"][0]["resources"]["requests"]["cpu"] == "500m"
    assert worker["containers"][0]["readinessProbe"], "the patch kept the rest of the container"


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in objects
        if o["kind"] in ("Deployment", "Job")
    }


def test_every_pod_runs_hardened_with_resources() -> None:
    specs = pod_specs(base_objects())
    assert set(specs) == {"billing-worker", "billing-relay", "billing-migrate"}
    for name, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            resources = container["resources"]
            assert resources["requests"]["cpu"], name
            assert resources["requests"]["memory"], name
            assert resources["limits"]["memory"], name
            mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
            assert "/tmp" in mounts, f"{name}: a read-only root needs a writable /tmp"


def test_the_commands_and_probes_are_the_cli_s_and_the_internal_port_s() -> None:
    from billing_worker.cli import build_parser

    specs = pod_specs(base_objects())
    parser = build_parser()
    expected = {
        "billing-worker": ["run"],
        "billing-relay": ["relay"],
        "billing-migrate": ["migrate"],
    }
    for name, args in expected.items():
        container = specs[name]["containers"][0]
        assert container["args"] == args
        parser.parse_args(container["args"])
    worker = specs["billing-worker"]["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in worker["ports"]}
    assert ports == {"metrics": 9477}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    grace = Settings.model_fields["shutdown_grace_seconds"].default
    assert specs["billing-worker"]["terminationGracePeriodSeconds"] > grace
    relay = specs["billing-relay"]["containers"][0]
    assert relay["readinessProbe"]["httpGet"]["path"] == "/healthz"
    service = by_kind(base_objects(), "Service")["billing-relay"]["spec"]
    assert service["ports"][0]["port"] == Settings.model_fields["relay_port"].default
    assert service["selector"] == {"app.kubernetes.io/name": "billing-relay"}


def test_every_setting_the_manifests_set_is_a_setting_and_secrets_are_files() -> None:
    objects = base_objects()
    config_maps = by_kind(objects, "ConfigMap")
    secrets = by_kind(objects, "Secret")
    for name, config in config_maps.items():
        unknown = set(config["data"]) - SETTING_NAMES - {SECRETS_DIR_ENV}
        assert not unknown, f"ConfigMap {name} sets what Settings does not read: {unknown}"
        values = {key.removeprefix("BILLING_").lower(): v for key, v in config["data"].items()}
        values.pop(SECRETS_DIR_ENV.removeprefix("BILLING_").lower(), None)
        Settings(_env_file=None, **values)  # every value is valid too
    for name, spec in pod_specs(objects).items():
        container = spec["containers"][0]
        assert "env" not in container, f"{name}: settings belong in the ConfigMap"
        [config_ref] = [ref["configMapRef"]["name"] for ref in container["envFrom"]]
        directory = config_maps[config_ref]["data"][SECRETS_DIR_ENV]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume = {v["name"]: v for v in spec["volumes"]}[mounts[directory]]
        secret = secrets[volume["secret"]["secretName"]]
        for key in secret["stringData"]:
            assert key.upper() in SETTING_NAMES, f"{key}: not a setting's file"
    relay_keys = set(secrets["billing-relay-secrets"]["stringData"])
    assert relay_keys <= {"billing_rabbitmq_url", "billing_stripe_webhook_secret"}


def test_the_worker_reads_the_mounted_secret_as_its_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The Secret's keys, written as the kubelet does, are what Settings loads."""
    secret = by_kind(base_objects(), "Secret")["billing-worker-secrets"]["stringData"]
    for key, value in secret.items():
        (tmp_path / key).write_text(value)
    for name in [name for name in os.environ if name.startswith("BILLING_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path))
    loaded = Settings(_env_file=None)
    assert loaded.database_dsn == secret["billing_database_url"]
    assert loaded.amqp_url == secret["billing_rabbitmq_url"]


def test_the_disruption_budgets_select_the_deployments() -> None:
    objects = base_objects()
    budgets = by_kind(objects, "PodDisruptionBudget")
    for name, deployment in by_kind(objects, "Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        budget = budgets[name]["spec"]
        assert budget["selector"]["matchLabels"].items() <= labels.items()
        assert budget["minAvailable"] < deployment["spec"]["replicas"]


def test_the_scaled_object_scales_the_worker_on_existing_command_queues() -> None:
    objects = base_objects()
    [scaled] = by_kind(objects, "ScaledObject").values()
    spec = scaled["spec"]
    assert set(spec) <= {"scaleTargetRef", "minReplicaCount", "maxReplicaCount",
                         "pollingInterval", "cooldownPeriod", "triggers", "advanced"}  # fmt: skip
    assert spec["scaleTargetRef"] == {"name": "billing-worker"}
    assert "billing-worker" in by_kind(objects, "Deployment")
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    budget = by_kind(objects, "PodDisruptionBudget")["billing-worker"]["spec"]
    assert budget["minAvailable"] < spec["minReplicaCount"]
    authentications = by_kind(objects, "TriggerAuthentication")
    secrets = by_kind(objects, "Secret")
    consumed = {*ALL_WORK_QUEUES, names.PROVIDER_EVENTS_QUEUE}
    assert spec["triggers"]
    for trigger in spec["triggers"]:
        assert trigger["type"] == "rabbitmq"
        metadata = trigger["metadata"]
        assert metadata["mode"] == "QueueLength"
        assert metadata["protocol"] == "amqp"
        assert int(metadata["value"]) > 0
        assert metadata["queueName"] in consumed, f"{metadata['queueName']}: no such queue"
        for ref in authentications[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]:
            assert ref["parameter"] == "host"
            assert ref["key"] in secrets[ref["name"]]["stringData"]
    watched = {trigger["metadata"]["queueName"] for trigger in spec["triggers"]}
    assert set(names.COMMAND_QUEUES) & watched, "no command queue is watched"


def test_kubernetes_validate_refuses_what_the_api_would() -> None:
    """The validation can fail: an unknown field and a wrong type are refused."""
    bad = documents(BASE / "relay-service.yaml")[0]
    bad["spec"]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, API_VERSION, strict=True)
    wrong = documents(BASE / "worker-pdb.yaml")[0]
    wrong["spec"]["selector"] = "billing-worker"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, API_VERSION, strict=True)
