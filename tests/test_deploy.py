"""deploy/: the Kubernetes manifests and the compose file, checked without a cluster or
Docker: every Kubernetes object against the API schemas (kubernetes-validate, offline),
and what the containers run through FaceStream's own CLI and configuration loader
(``consume --print-config``), so a renamed flag or setting breaks this test, not a rollout."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream_worker.cli.main import main
from stream_worker.config import env_name

REPO = Path(__file__).resolve().parents[1]
KUBE = REPO / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"


def kube_objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    objects = []
    for resource in kustomization["resources"]:
        objects += [doc for doc in yaml.safe_load_all((KUBE / resource).read_text()) if doc]
    return objects


def the(kind: str) -> dict[str, Any]:
    [found] = [o for o in kube_objects() if o["kind"] == kind]
    return found


def _keys(node: Any) -> list[str]:
    """Every mapping key in a YAML document, at any depth."""
    if isinstance(node, dict):
        return [str(k) for k in node] + [k for v in node.values() for k in _keys(v)]
    return [k for v in node for k in _keys(v)] if isinstance(node, list) else []


def effective_config(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: list[str],
                     env: dict[str, str]) -> dict[str, Any]:
    """What ``facestream <args>`` would run with, under ``env``."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert main([*args, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_kubernetes_object_is_valid_for_the_api() -> None:
    import kubernetes_validate

    objects = kube_objects()
    assert {o["kind"] for o in objects} == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)  # raises on any error


def test_the_deployment_runs_the_worker_with_its_config_and_probes(capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    deployment, config_map = the("Deployment"), the("ConfigMap")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    # The config file, mounted where the args say
    [config_arg] = [container["args"][i + 1] for i, a in enumerate(container["args"]) if a == "--config"]
    [mount] = [m for m in container["volumeMounts"] if config_arg.startswith(m["mountPath"] + "/")]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    local = tmp_path / Path(config_arg).name
    local.write_text(config_map["data"][Path(config_arg).name])
    args = [str(local) if a == config_arg else a for a in container["args"]]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    config = effective_config(capsys, monkeypatch, args, env)
    # Probes and Prometheus reach the metrics port from outside the pod
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    assert config["metrics"] == {"host": "0.0.0.0", "port": port}
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "metrics"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    # /health is 503 while the worker starts (models, changelog): the startup probe waits for
    # that, as the README says, before the liveness probe takes over
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 600
    # The SASL password comes only from a Secret, never from the file or a literal
    [password] = [e for e in container["env"] if e["name"] == env_name(("kafka", "sasl_password"))]
    assert "value" not in password and password["valueFrom"]["secretKeyRef"]["name"]
    assert not [key for key in _keys(yaml.safe_load(local.read_text())) if "password" in key.lower()]
    # Writable /tmp (the gallery copy) on a read-only root, as the image's user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    uid = re.search(r"--uid (\d+)", (REPO / "deploy" / "Dockerfile").read_text())
    assert uid and pod["securityContext"]["runAsUser"] == int(uid.group(1))
    # More partitions than replicas, or some workers would idle
    assert config["kafka"]["frames_partitions"] >= deployment["spec"]["replicas"]


def test_the_service_and_budget_select_the_worker_pods() -> None:
    labels = the("Deployment")["spec"]["template"]["metadata"]["labels"]
    service, budget = the("Service"), the("PodDisruptionBudget")
    assert service["spec"]["selector"].items() <= labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_the_compose_worker_command_and_environment_are_understood(capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    env = {k: str(v) for k, v in worker["environment"].items()}
    config = effective_config(capsys, monkeypatch, worker["command"], env)
    assert config["kafka"]["bootstrap_servers"] == "kafka:9092"
    assert config["metrics"]["host"] == "0.0.0.0" and config["metrics"]["port"] == 9100
    assert config["kafka"]["frames_partitions"] == int(env["FACESTREAM__KAFKA__FRAMES_PARTITIONS"])
    assert "9092" in compose["services"]["kafka"]["environment"]["KAFKA_LISTENERS"]


def test_the_runtime_needs_no_torch_and_the_image_converts_in_a_build_stage() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"]).lower()
    assert "torch" not in runtime and "onnxscript" not in runtime
    assert any(d.startswith("torch==") for d in project["optional-dependencies"]["convert"])
    stages = re.split(r"^FROM ", (REPO / "deploy" / "Dockerfile").read_text(), flags=re.M)[1:]
    assert len(stages) == 2 and stages[0].startswith("python:3.11-slim AS models")
    assert "'.[convert]'" in stages[0] and "facestream models fetch" in stages[0]
    final = stages[-1]
    assert "convert" not in final and "torch" not in final and "models fetch" not in final
    assert "COPY --from=models /models /models" in final and "FACESTREAM__MODELS__AUTO_FETCH=0" in final
