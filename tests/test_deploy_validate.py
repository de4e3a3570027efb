"""Every manifest under deploy/ against a schema, offline (kubernetes-validate).

- Built-in kinds are validated strictly (an unknown field is an error, as ``kubectl
  apply --validate=strict`` does) against the Kubernetes schemas kubernetes-validate
  ships, for the oldest and the newest version we claim.
- Kinds without a bundled schema get a small one of ours: kustomize's Kustomization (its
  resources must exist), the Agones Fleet (its Pod template is validated as a Pod), the
  Prometheus Operator's PrometheusRule. A kind nobody knows fails the test.
- The Redis Cluster overlay (deploy/redis-cluster/) is rendered here with the two patch
  kinds it uses (a strategic-merge patch that merges lists of containers and env vars by
  name, and ``$patch: delete``), and the result is validated like the base; then what it
  must say: a redis+cluster:// URL built from the Secret, durability replica, the
  single Valkey gone, the cluster's pods on distinct nodes.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OVERLAY = DEPLOY / "redis-cluster"
# The oldest Kubernetes we document (deploy/README.md) and the newest schemas shipped.
VERSIONS = ("1.30", latest_version())

Doc = dict[str, Any]

KUSTOMIZATION = {
    "type": "object",
    "required": ["apiVersion", "kind", "resources"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "kustomize.config.k8s.io/v1beta1"},
        "kind": {"const": "Kustomization"},
        "namespace": {"type": "string"},
        "resources": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "images": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    k: {"type": "string"} for k in ("name", "newName", "newTag", "digest")
                },
            },
        },
        "patches": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"patch": {"type": "string"}, "target": {"type": "object"}},
                "required": ["patch"],
            },
        },
    },
}

FLEET = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "agones.dev/v1"},
        "kind": {"const": "Fleet"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["template"],
            "properties": {
                "replicas": {"type": "integer", "minimum": 0},
                "scheduling": {"enum": ["Packed", "Distributed"]},
                "strategy": {"type": "object"},
                "template": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "metadata": {"type": "object"},
                        "spec": {
                            "type": "object",
                            "required": ["template"],
                            "properties": {
                                "container": {"type": "string"},
                                "ports": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["name", "containerPort"],
                                        "properties": {
                                            "name": {"type": "string"},
                                            "containerPort": {"type": "integer"},
                                            "portPolicy": {
                                                "enum": ["Dynamic", "Static", "Passthrough", "None"]
                                            },
                                            "protocol": {"enum": ["TCP", "UDP", "TCPUDP"]},
                                            "container": {"type": "string"},
                                        },
                                    },
                                },
                                "health": {"type": "object"},
                                "sdkServer": {"type": "object"},
                                "template": {"type": "object", "required": ["spec"]},
                            },
                        },
                    },
                },
            },
        },
    },
}

PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "interval": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": {"type": "string", "pattern": r"^[0-9]+[smhd]$"},
                                        "labels": {"type": "object"},
                                        "annotations": {"type": "object"},
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}

OWN_SCHEMAS = {"Kustomization": KUSTOMIZATION, "Fleet": FLEET, "PrometheusRule": PROMETHEUS_RULE}


def _documents(paths: list[Path]) -> list[tuple[str, Doc]]:
    docs = []
    for path in sorted(paths):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.relative_to(ROOT)}#{index}", doc))
    return docs


DOCS = _documents([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def validate(doc: Doc, where: str) -> None:
    """Raise (with ``where`` in the message) if ``doc`` is not valid."""
    kind = doc.get("kind")
    schema = OWN_SCHEMAS.get(str(kind))
    if schema is not None:
        jsonschema.validate(doc, schema)
        if kind == "Fleet":  # the GameServer's Pod template is an ordinary Pod
            template = doc["spec"]["template"]["spec"]["template"]
            pod = {"apiVersion": "v1", "kind": "Pod", **copy.deepcopy(template)}
            pod.setdefault("metadata", {})["name"] = "fleet-pod"
            validate(pod, f"{where} (Pod template)")
        return
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{where}: no schema for {doc.get('apiVersion')}/{kind}; add one here")
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: not a valid {kind} for Kubernetes {version}: {exc.message}")


@pytest.mark.parametrize(("where", "doc"), DOCS, ids=[w for w, _ in DOCS])
def test_every_manifest_is_valid(where: str, doc: Doc) -> None:
    validate(doc, where)


def test_kustomizations_list_files_that_exist() -> None:
    for path in DEPLOY.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(path.read_text())["resources"]:
            target = (path.parent / resource).resolve()
            assert target.exists(), f"{path.relative_to(ROOT)}: {resource} does not exist"
            if target.is_dir():
                assert (target / "kustomization.yaml").exists(), f"{resource} is no kustomization"


def test_the_checker_refuses_a_bad_manifest() -> None:
    """It can fail: an unknown field, a wrong type, a missing required field."""
    deployment = next(d for w, d in DOCS if w.startswith("deploy/rooms.yaml"))
    for mutate in (
        lambda d: d["spec"].__setitem__("replica", 3),  # typo of replicas
        lambda d: d["spec"].__setitem__("replicas", "four"),
        lambda d: d["spec"]["template"]["spec"].__delitem__("containers"),
    ):
        bad = copy.deepcopy(deployment)
        mutate(bad)
        with pytest.raises(pytest.fail.Exception):
            validate(bad, "mutated rooms.yaml")
    rule = next(d for _, d in DOCS if d.get("kind") == "PrometheusRule")
    bad_rule = copy.deepcopy(rule)
    bad_rule["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    with pytest.raises(jsonschema.ValidationError):
        validate(bad_rule, "mutated alerts.yaml")


# ---------------------------------------------------------------- the Redis Cluster overlay


def _key(doc: Doc) -> tuple[str, str]:
    return str(doc["kind"]), str(doc["metadata"]["name"])


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge as far as these manifests need it: maps merge, lists of maps with
    a ``name`` merge by name (containers, env), other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    named = isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in patch)
    if isinstance(base, list) and named:
        out = [copy.deepcopy(item) for item in base]
        for item in patch:
            names = [x.get("name") for x in out]
            if item["name"] in names:
                index = names.index(item["name"])
                out[index] = _merge(out[index], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def render(overlay: Path) -> dict[tuple[str, str], Doc]:
    """The overlay's resources with its patches applied (what kustomize would apply)."""
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    docs: dict[tuple[str, str], Doc] = {}
    for resource in kustomization["resources"]:
        target = (overlay / resource).resolve()
        if target.is_dir():
            docs.update(render(target))
        else:
            docs.update({_key(d): d for _, d in _documents([target])})
    for entry in kustomization.get("patches", []):
        patch = yaml.safe_load(entry["patch"])
        key = _key(patch)
        assert key in docs, f"{overlay.name}: patch of {key}, which is not there"
        if patch.pop("$patch", None) == "delete":
            del docs[key]
        else:
            docs[key] = _merge(docs[key], patch)
    return docs


RENDERED = render(OVERLAY)


@pytest.mark.parametrize("key", sorted(RENDERED), ids=[f"{k}/{n}" for k, n in sorted(RENDERED)])
def test_the_cluster_overlay_renders_valid_manifests(key: tuple[str, str]) -> None:
    validate(RENDERED[key], f"redis-cluster: {key[0]}/{key[1]}")


def _env(doc: Doc, container: str) -> dict[str, Doc]:
    (found,) = [c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == container]
    return {e["name"]: e for e in found["env"]}


def test_the_cluster_overlay_points_both_services_at_the_cluster() -> None:
    assert ("StatefulSet", "valkey") not in RENDERED and ("Service", "valkey") not in RENDERED
    assert ("NetworkPolicy", "valkey") not in RENDERED
    nodes = RENDERED[("StatefulSet", "valkey-cluster")]
    assert nodes["spec"]["replicas"] == 6  # 3 primaries + 1 replica each
    for name in ("auth", "rooms"):
        env = _env(RENDERED[("Deployment", name)], name)
        url = env["STATEROOM_REDIS_URL"]["value"]
        assert url.startswith("redis+cluster://:$(REDIS_PASSWORD)@"), url
        seeds = url.split("@", 1)[1].split(",")
        assert len(seeds) >= 3
        assert all(
            re.fullmatch(r"valkey-cluster-\d\.valkey-cluster\.[a-z.]+:6379", s) for s in seeds
        )
        names = list(env)
        assert names.index("REDIS_PASSWORD") < names.index("STATEROOM_REDIS_URL")
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "stateroom-valkey"
    config = RENDERED[("ConfigMap", "stateroom-config")]["data"]
    assert config["STATEROOM_DURABILITY"] == "replica"
    base_config = next(d for w, d in DOCS if w.startswith("deploy/config.yaml"))
    assert base_config["data"]["STATEROOM_DURABILITY"] == "local"  # no replica in the base


def test_the_clusters_nodes_and_the_room_servers_spread_over_nodes() -> None:
    nodes = RENDERED[("StatefulSet", "valkey-cluster")]["spec"]["template"]["spec"]
    (required,) = nodes["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert required["topologyKey"] == "kubernetes.io/hostname"
    assert required["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": "valkey-cluster"}
    rooms = RENDERED[("Deployment", "rooms")]["spec"]["template"]["spec"]
    keys = {c["topologyKey"] for c in rooms["topologySpreadConstraints"]}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    (preferred,) = rooms["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert preferred["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


def test_only_our_pods_reach_the_cluster() -> None:
    policy = RENDERED[("NetworkPolicy", "valkey-cluster")]["spec"]
    ports: dict[int, set[str]] = {}
    for rule in policy["ingress"]:
        sources: set[str] = set()
        for source in rule["from"]:
            assert set(source) == {"podSelector"}, "same-namespace pods only"
            selector = source["podSelector"]
            sources |= set(selector.get("matchLabels", {}).values())
            for expr in selector.get("matchExpressions", []):
                sources |= set(expr["values"])
        for port in rule["ports"]:
            ports.setdefault(int(port["port"]), set()).update(sources)
    assert ports == {
        6379: {"auth", "rooms", "valkey-cluster", "valkey-cluster-init"},
        16379: {"valkey-cluster"},  # the cluster bus: the nodes alone
    }
