"""The hardening of deploy/, checked on the manifests themselves (no cluster needed).

Every YAML document under deploy/ is loaded; every Pod template (Deployments,
StatefulSets, the Agones Fleet) must run without a service-account token, as a fixed
non-root user, read-only, without capabilities or privilege escalation, under the
RuntimeDefault seccomp profile, and must not carry a password in an argument or an env
value. Valkey's password comes from a Secret through a config file, protected mode is
on, and NetworkPolicies deny ingress by default and admit only auth and room servers to
Valkey. The image installs from the hashed lock file, which matches pyproject.toml.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
VALKEY_SECRET = "stateroom-valkey"
# The ports anyone may reach, per app; everything else is closed or narrower.
PUBLIC_PORTS = {"auth": {8000}, "rooms": {8001}}
ADMIN_PORT = 9101
REDIS_PORT = 6379
# "redis://user:password@host": credentials written into a URL.
URL_WITH_PASSWORD = re.compile(r"rediss?://[^/@\s]*:([^/@\s]+)@")
SECRET_NAME_WORDS = ("PASSWORD", "TOKEN", "SECRET", "REDISCLI_AUTH")

Doc = dict[str, Any]


def _documents() -> list[tuple[Path, Doc]]:
    docs = []
    for path in sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


DOCS = _documents()


def _name(doc: Doc) -> str:
    return str(doc.get("metadata", {}).get("name", "?"))


def _pod_templates() -> Iterator[tuple[str, Doc, Doc]]:
    """(id, the workload document, its Pod spec) for every Pod template under deploy/."""
    for path, doc in DOCS:
        kind = doc.get("kind")
        where = f"{path.relative_to(ROOT)}:{kind}/{_name(doc)}"
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            yield where, doc, doc["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield where, doc, doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif kind == "Pod":
            yield where, doc, doc["spec"]
        elif kind == "Fleet":  # Agones: Fleet -> GameServer template -> Pod template
            yield where, doc, doc["spec"]["template"]["spec"]["template"]["spec"]
        elif kind == "GameServer":
            yield where, doc, doc["spec"]["template"]["spec"]


TEMPLATES = list(_pod_templates())
TEMPLATE_IDS = [t[0] for t in TEMPLATES]


def _containers(pod: Doc) -> list[Doc]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _pod_metadata(doc: Doc) -> Doc:
    """The metadata of a workload's Pod template."""
    if doc["kind"] == "Fleet":
        return dict(doc["spec"]["template"]["spec"]["template"].get("metadata", {}))
    if doc["kind"] == "Pod":
        return dict(doc.get("metadata", {}))
    return dict(doc["spec"]["template"].get("metadata", {}))


def _app(doc: Doc) -> str:
    """The app.kubernetes.io/name label of a workload's Pods (what NetworkPolicies select)."""
    return str(_pod_metadata(doc).get("labels", {}).get("app.kubernetes.io/name", ""))


def _is_agones(doc: Doc) -> bool:
    return str(doc.get("apiVersion", "")).startswith("agones.dev/")


def _agones_game_container(doc: Doc) -> str | None:
    if doc.get("kind") == "Fleet":
        return doc["spec"]["template"]["spec"].get("container")
    if doc.get("kind") == "GameServer":
        return doc["spec"].get("container")
    return None


def test_manifests_found() -> None:
    kinds = {doc["kind"] for _, doc in DOCS}
    assert {"Deployment", "StatefulSet", "Fleet", "NetworkPolicy"} <= kinds
    assert {_app(doc) for _, doc, _ in TEMPLATES} >= {"auth", "rooms", "valkey"}


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == listed, "agones/ stays optional; every top-level manifest is applied"


def test_no_secret_objects_in_deploy() -> None:
    # Secrets are created out of band (deploy/README.md); a manifest never holds one.
    assert [f"{p}:{_name(d)}" for p, d in DOCS if d.get("kind") == "Secret"] == []


@pytest.mark.parametrize(("where", "doc", "pod"), TEMPLATES, ids=TEMPLATE_IDS)
def test_service_account_token_not_mounted(where: str, doc: Doc, pod: Doc) -> None:
    if not _is_agones(doc):
        assert pod.get("automountServiceAccountToken") is False, where
        return
    # Agones' injected SDK sidecar needs the token; Agones hides it from the game-server
    # container, and every other container of ours must hide it with an empty volume.
    game = _agones_game_container(doc)
    assert game is not None, where
    empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    for container in _containers(pod):
        if container["name"] == game:
            continue
        masks = [
            m
            for m in container.get("volumeMounts", [])
            if m["mountPath"].rstrip("/") == TOKEN_PATH and m["name"] in empty_dirs
        ]
        assert masks, f"{where}: container {container['name']} must hide {TOKEN_PATH}"


@pytest.mark.parametrize(("where", "doc", "pod"), TEMPLATES, ids=TEMPLATE_IDS)
def test_pod_security_context(where: str, doc: Doc, pod: Doc) -> None:
    ctx = pod.get("securityContext", {})
    assert ctx.get("runAsNonRoot") is True, where
    for field in ("runAsUser", "runAsGroup"):
        assert isinstance(ctx.get(field), int), f"{where}: {field} must be a fixed id"
        assert ctx[field] > 0, f"{where}: {field} must not be root"
    assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(host), f"{where}: {host}"


@pytest.mark.parametrize(("where", "doc", "pod"), TEMPLATES, ids=TEMPLATE_IDS)
def test_container_security_context(where: str, doc: Doc, pod: Doc) -> None:
    for container in _containers(pod):
        name = f"{where}/{container['name']}"
        ctx = container.get("securityContext", {})
        assert ctx.get("allowPrivilegeEscalation") is False, name
        assert ctx.get("readOnlyRootFilesystem") is True, name
        assert "ALL" in ctx.get("capabilities", {}).get("drop", []), name
        assert not ctx.get("capabilities", {}).get("add"), name
        assert not ctx.get("privileged"), name
        assert ctx.get("runAsUser", 1) != 0, name
        assert ctx.get("runAsNonRoot", True) is True, name
        profile = ctx.get("seccompProfile", {}).get("type", "RuntimeDefault")
        assert profile == "RuntimeDefault", name


@pytest.mark.parametrize(("where", "doc", "pod"), TEMPLATES, ids=TEMPLATE_IDS)
def test_writable_paths_are_volumes(where: str, doc: Doc, pod: Doc) -> None:
    # With a read-only root filesystem, what a process writes goes to a declared volume.
    volumes = {v["name"] for v in pod.get("volumes", [])}
    volumes |= {c["metadata"]["name"] for c in doc["spec"].get("volumeClaimTemplates", [])}
    for container in _containers(pod):
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{where}/{container['name']}: {mount['name']}"


def _literal_password(text: str) -> str | None:
    """A password written out in text, or None. $(VAR), $VAR and %s placeholders are not."""
    for match in URL_WITH_PASSWORD.finditer(text):
        if not re.fullmatch(r"\$\([A-Za-z_][A-Za-z0-9_]*\)", match.group(1)):
            return match.group(0)
    for match in re.finditer(r"requirepass[\s=]+(\S+)", text):
        if not re.match(r"""['"]?(%s|\$)""", match.group(1)):
            return match.group(0)
    match = re.search(r"(?:valkey|redis)-cli\b[^|;&]*\s(?:-a|--pass)\s+\S+", text)
    return match.group(0) if match else None


@pytest.mark.parametrize(("where", "doc", "pod"), TEMPLATES, ids=TEMPLATE_IDS)
def test_no_literal_password_in_args_or_env(where: str, doc: Doc, pod: Doc) -> None:
    for container in _containers(pod):
        name = f"{where}/{container['name']}"
        words = [*container.get("command", []), *container.get("args", [])]
        for word in words:
            assert _literal_password(str(word)) is None, f"{name}: argument {word!r}"
            assert "--requirepass" not in str(word), f"{name}: password on the command line"
        for env in container.get("env", []):
            value = env.get("value")
            if value is not None:
                assert _literal_password(str(value)) is None, f"{name}: env {env['name']}"
            if any(word in env["name"].upper() for word in SECRET_NAME_WORDS):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                assert ref is not None, f"{name}: {env['name']} must come from a Secret"


@pytest.mark.parametrize(("where", "doc", "pod"), TEMPLATES, ids=TEMPLATE_IDS)
def test_redis_url_built_from_the_secret(where: str, doc: Doc, pod: Doc) -> None:
    if _app(doc) not in ("auth", "rooms"):
        return
    game = _agones_game_container(doc)
    for container in pod["containers"]:
        if _is_agones(doc) and container["name"] != game:
            continue  # the Agones readiness sidecar talks to no Redis
        env = container.get("env", [])
        names = [e["name"] for e in env]
        assert "STATEROOM_REDIS_URL" in names, f"{where}/{container['name']}"
        url = env[names.index("STATEROOM_REDIS_URL")]
        refs = re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", url.get("value", ""))
        assert refs, f"{where}: STATEROOM_REDIS_URL must reference the password variable"
        for ref in refs:
            # $(VAR) is expanded only from variables defined earlier in the list.
            assert ref in names[: names.index("STATEROOM_REDIS_URL")], f"{where}: {ref}"
            secret = env[names.index(ref)].get("valueFrom", {}).get("secretKeyRef", {})
            assert secret.get("name") == VALKEY_SECRET, f"{where}: {ref}"


def test_configmaps_hold_no_credentials() -> None:
    for path, doc in DOCS:
        if doc.get("kind") != "ConfigMap":
            continue
        for key, value in doc.get("data", {}).items():
            assert _literal_password(str(value)) is None, f"{path}:{_name(doc)}/{key}"
            assert not re.search(r"^\s*requirepass\b", str(value), re.M), f"{path}: {key}"


def _valkey() -> tuple[Doc, Doc]:
    found = [(doc, pod) for _, doc, pod in TEMPLATES if _app(doc) == "valkey"]
    assert len(found) == 1
    return found[0]


def _valkey_conf() -> str:
    maps = [d for _, d in DOCS if d.get("kind") == "ConfigMap" and _name(d) == "valkey-config"]
    assert len(maps) == 1
    return str(maps[0]["data"]["valkey.conf"])


def test_valkey_protected_mode_and_config_file() -> None:
    _, pod = _valkey()
    (server,) = [c for c in pod["containers"] if c["name"] == "valkey"]
    words = [*server.get("command", []), *server.get("args", [])]
    assert "/etc/valkey/valkey.conf" in words
    assert "--protected-mode" not in words
    conf = _valkey_conf()
    assert re.search(r"^protected-mode yes$", conf, re.M)
    assert re.search(r"^maxmemory-policy noeviction$", conf, re.M)
    assert re.search(r"^appendonly yes$", conf, re.M)


def test_valkey_requirepass_comes_from_the_secret() -> None:
    _, pod = _valkey()
    include = re.search(r"^include (\S+)$", _valkey_conf(), re.M)
    assert include, "valkey.conf must include the generated requirepass file"
    conf_dir = str(Path(include.group(1)).parent)
    memory_dirs = {
        v["name"] for v in pod.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"
    }
    writers = []
    for init in pod.get("initContainers", []):
        script = " ".join(map(str, [*init.get("command", []), *init.get("args", [])]))
        if "requirepass" not in script:
            continue
        env = {e["name"]: e for e in init.get("env", [])}
        variables = re.findall(r'requirepass[^"]*"\$\{?([A-Za-z_][A-Za-z0-9_]*)', script)
        assert variables, "requirepass must be written from an environment variable"
        ref = env[variables[0]]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == VALKEY_SECRET
        mounts = {m["mountPath"]: m["name"] for m in init.get("volumeMounts", [])}
        assert mounts.get(conf_dir) in memory_dirs, "the password file lives on tmpfs"
        writers.append(init["name"])
    assert writers, "an init container writes requirepass from the Secret"
    (server,) = [c for c in pod["containers"] if c["name"] == "valkey"]
    mounts = {m["mountPath"]: m for m in server.get("volumeMounts", [])}
    assert mounts[conf_dir]["name"] in memory_dirs
    assert mounts[conf_dir].get("readOnly") is True


def _policies() -> list[Doc]:
    return [d for _, d in DOCS if d.get("kind") == "NetworkPolicy"]


def _selects(policy: Doc, app: str) -> bool:
    selector = policy["spec"].get("podSelector", {})
    if not selector:
        return True
    labels = selector.get("matchLabels", {})
    return bool(labels) and labels == {"app.kubernetes.io/name": app}


def _ports(rule: Doc) -> set[int]:
    ports = {int(p["port"]) for p in rule.get("ports", [])}
    assert ports, "a rule without ports opens every port"
    return ports


def test_default_deny_ingress() -> None:
    deny = [
        p
        for p in _policies()
        if p["spec"].get("podSelector") == {}
        and "Ingress" in p["spec"].get("policyTypes", [])
        and not p["spec"].get("ingress")
    ]
    assert deny, "a NetworkPolicy must deny all ingress in the namespace by default"


def test_only_auth_and_rooms_reach_valkey() -> None:
    rules = [r for p in _policies() if _selects(p, "valkey") for r in p["spec"].get("ingress", [])]
    assert rules, "a NetworkPolicy must admit the auth and room-server pods to Valkey"
    for rule in rules:
        assert _ports(rule) == {REDIS_PORT}
        sources = rule.get("from")
        assert sources, "Valkey must not be open to every source"
        for source in sources:
            assert set(source) == {"podSelector"}, "same-namespace pods only, no ipBlock"
            selector = source["podSelector"]
            names = set()
            if "app.kubernetes.io/name" in selector.get("matchLabels", {}):
                names.add(selector["matchLabels"]["app.kubernetes.io/name"])
            for expr in selector.get("matchExpressions", []):
                assert expr["key"] == "app.kubernetes.io/name" and expr["operator"] == "In"
                names |= set(expr["values"])
            assert names and names <= {"auth", "rooms"}, names


@pytest.mark.parametrize("app", sorted(PUBLIC_PORTS))
def test_players_reach_only_public_ports(app: str) -> None:
    rules = [r for p in _policies() if _selects(p, app) for r in p["spec"].get("ingress", [])]
    open_to_all = set().union(*[_ports(r) for r in rules if not r.get("from")])
    assert open_to_all == PUBLIC_PORTS[app]
    for rule in rules:
        for source in rule.get("from", []):
            assert "ipBlock" not in source, f"{app}: no address range beyond the public port"


def test_admin_port_only_for_prometheus() -> None:
    rules = [r for p in _policies() if _selects(p, "rooms") for r in p["spec"].get("ingress", [])]
    admin = [r for r in rules if ADMIN_PORT in _ports(r)]
    assert admin, "Prometheus must be able to scrape the room servers' admin port"
    for rule in admin:
        assert rule.get("from"), "the admin port is never open to all"
        for source in rule["from"]:
            assert "namespaceSelector" in source and "podSelector" in source, source


def test_rooms_admin_listener_configured() -> None:
    for where, doc, pod in TEMPLATES:
        if _app(doc) != "rooms":
            continue
        game = _agones_game_container(doc) or "rooms"
        (server,) = [c for c in pod["containers"] if c["name"] == game]
        env = {e["name"]: e.get("value") for e in server.get("env", [])}
        assert env.get("STATEROOM_ADMIN_HOST") == "0.0.0.0", where
        assert env.get("STATEROOM_ADMIN_PORT") == str(ADMIN_PORT), where
        annotations = _pod_metadata(doc).get("annotations", {})
        assert annotations.get("prometheus.io/port") == str(ADMIN_PORT), where


def test_auth_metrics_token_from_a_secret() -> None:
    for where, doc, pod in TEMPLATES:
        if _app(doc) != "auth":
            continue
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert "secretKeyRef" in env["STATEROOM_ADMIN_TOKEN"]["valueFrom"], where
            assert "STATEROOM_AUTH_TRUSTED_PROXIES" in env, where


def _packages() -> list[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return [pattern.rstrip("*") for pattern in include]


def test_dockerfile_installs_from_the_lock_as_non_root() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    lock_install = r"pip install --no-deps --require-hashes -r requirements\.lock && pip check"
    assert re.search(lock_install, dockerfile)
    assert re.search(r"pip install --no-deps \.", dockerfile)
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users, "the image must not run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root user (runAsNonRoot checks it)"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert "!requirements.lock" in ignore
    for package in _packages():
        assert re.search(rf"^COPY {package}/ {package}/$", dockerfile, re.M), package
        assert f"!{package}/**" in ignore, package


def _locked(path: Path) -> dict[str, str]:
    """name -> version of every pin in a lock file; each pin must carry hashes."""
    pins: dict[str, str] = {}
    text = path.read_text()
    for block in re.split(r"\n(?=\S)", text):
        if block.startswith("#") or not block.strip():
            continue
        match = re.match(r"([A-Za-z0-9._-]+)==(\S+)", block)
        assert match, f"{path.name}: not an exact pin: {block.splitlines()[0]}"
        assert "--hash=sha256:" in block, f"{path.name}: {match.group(1)} has no hash"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


@pytest.mark.parametrize(
    ("lock", "extras"), [("requirements.lock", ()), ("requirements-dev.lock", ("test",))]
)
def test_lock_matches_pyproject(lock: str, extras: tuple[str, ...]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    pins = _locked(ROOT / lock)
    for line in wanted:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        assert name in pins, f"{lock} lacks {name}: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {name}=={pins[name]}, outside {requirement.specifier}: run `make lock`"
        )
