#!/usr/bin/env python3
"""What must hold in the chart's rendered manifests, for each values file in
helm/ganglion/ci/ and for the media stores of MEDIA_VARIANTS, and the values
the chart must refuse to render.

Run by scripts/check-helm.sh after `helm template` (one file per values file
in --rendered) and kubernetes-validate. Needs the `ganglion` binary: option
names are checked against `ganglion generate-config`, every process's
effective configuration (its ConfigMap plus its environment) with
`ganglion check-config`, and the Ingress against `ganglion routes`.
Prints one line per check; exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

RELEASE = "t"
NAMESPACE = "ganglion"
FULLNAME = f"{RELEASE}-ganglion"
# The services, as `ganglion generate-config` lists them (set in main()).
SERVICES: list[str] = []
STATELESS = ["gateway", "clientapi", "userapi", "keyserver", "federationapi", "mediaapi"]
WRITERS = ["roomserver", "federationsender"]
WITH_HTTP = ["clientapi", "syncapi", "federationapi", "mediaapi"]
WITH_SIGNING_KEY = ["roomserver", "federationapi", "monolith"]
PERSONALITIES: set[str] = set()

# The media store a render must give (see check_media): "pvc" with the
# claim's access mode and `claim` if an existing one is named (None: the
# chart's own `<fullname>-media`), or "s3" with its bucket and the Secret
# (name, key) of its secret key; both with the limits the configuration
# carries.
MEDIA_DEFAULT_LIMITS = {"max_upload_bytes": 52428800, "user_quota_bytes": 0}

# What each values file must give: replicas per service (an int for a fixed
# count, (min, max) for an autoscaled one), the syncapi's storage and the
# media store.
EXPECTED = {
    "polylith-small-values": {
        "mode": "polylith",
        "replicas": {name: 1 for name in STATELESS + WRITERS + ["syncapi"]},
        "syncapi_database": "postgres",
        "partitions": 4,
        "media": {"store": "pvc", "access": "ReadWriteOnce", "claim": None, **MEDIA_DEFAULT_LIMITS},
    },
    "polylith-scaled-values": {
        "mode": "polylith",
        "replicas": {
            "gateway": (3, 12),
            "clientapi": (3, 12),
            "userapi": 3,
            "keyserver": 2,
            "federationapi": (2, 6),
            "mediaapi": (2, 6),
            "roomserver": 4,
            "federationsender": (2, 8),
            "syncapi": 3,
        },
        "syncapi_database": "sqlite",
        "partitions": 8,
        "media": {
            "store": "s3",
            "bucket": "ganglion-media",
            "region": "eu-west-1",
            "endpoint": "https://s3.eu-west-1.amazonaws.com",
            "prefix": "media/",
            "allow_http": False,
            "access_key_id": "AKIAEXAMPLEEXAMPLE01",
            "secret": ("ganglion-media-s3", "AWS_SECRET_ACCESS_KEY"),
            "max_upload_bytes": 104857600,
            "user_quota_bytes": 10737418240,
        },
    },
    "monolith-values": {
        "mode": "monolith",
        "replicas": {"monolith": 1},
        "partitions": 4,
        "media": {"store": "pvc", **MEDIA_DEFAULT_LIMITS},
    },
}

# Media stores beside those of the values files: (values file, --set
# arguments, the media store the render must give). These renders are
# checked by check_media and `ganglion check-config` (not linted or
# validated against the schemas: they differ from their file in media
# values only).
MEDIA_VARIANTS = [
    (
        "polylith-scaled-values",
        ["media.store=pvc", "media.pvc.accessMode=ReadWriteMany", "media.pvc.existingClaim=media-nfs"],
        {"store": "pvc", "access": "ReadWriteMany", "claim": "media-nfs", "max_upload_bytes": 104857600, "user_quota_bytes": 10737418240},
    ),
    (
        "polylith-small-values",
        ["media.pvc.accessMode=ReadWriteMany", "services.mediaapi.replicas=3"],
        {"store": "pvc", "access": "ReadWriteMany", "claim": None, **MEDIA_DEFAULT_LIMITS},
    ),
    (
        "polylith-small-values",
        ["media.store=s3", "media.s3.bucket=media", "media.s3.endpoint=http://minio:9000", "media.s3.allowHttp=true"],
        {"store": "s3", "bucket": "media", "region": "us-east-1", "endpoint": "http://minio:9000", "prefix": None,
         "allow_http": True, "access_key_id": None, "secret": None, **MEDIA_DEFAULT_LIMITS},
    ),
    (
        "monolith-values",
        ["media.store=s3", "media.s3.bucket=solo-media", "media.s3.accessKeyId=AKIAEXAMPLE",
         "media.s3.secretAccessKeySecret.name=solo-s3", "media.s3.secretAccessKeySecret.key=secret"],
        {"store": "s3", "bucket": "solo-media", "region": "us-east-1", "endpoint": None, "prefix": None,
         "allow_http": False, "access_key_id": "AKIAEXAMPLE", "secret": ("solo-s3", "secret"), **MEDIA_DEFAULT_LIMITS},
    ),
]

# Values the chart must refuse: (values file, --set arguments, words the
# error must contain).
REFUSED = [
    (
        "polylith-scaled-values",
        ["services.roomserver.replicas=9"],
        "services.roomserver.replicas (9) is more than kafka.partitions (8)",
    ),
    (
        "polylith-small-values",
        ["services.federationsender.replicas=5"],
        "services.federationsender.replicas (5) is more than kafka.partitions (4)",
    ),
    (
        "polylith-scaled-values",
        ["services.federationsender.autoscaling.maxReplicas=9"],
        "services.federationsender.autoscaling.maxReplicas (9) is more than kafka.partitions (8)",
    ),
    (
        "polylith-scaled-values",
        ["kafka.partitions=2"],
        "services.roomserver.replicas (4) is more than kafka.partitions (2)",
    ),
    ("polylith-small-values", ["serverName="], "serverName is required"),
    ("polylith-small-values", ["kafka.brokers="], "kafka.brokers is required"),
    ("polylith-small-values", ["postgresql.host="], "needs a database"),
    ("polylith-small-values", ["services.syncapi.database=mysql"], "must be postgres or sqlite"),
    ("monolith-values", ["keys.signingKey="], "keys.internalSecret is given without keys.signingKey"),
    ("polylith-small-values", ["mode=cluster"], "mode must be polylith or monolith"),
    # Media: one volume that one node at a time may mount cannot serve
    # several mediaapi pods; an s3 store needs its bucket and whole
    # credentials.
    (
        "polylith-small-values",
        ["services.mediaapi.replicas=2"],
        "media.store is pvc and the mediaapi may run more than one pod (services.mediaapi.replicas is 2), but media.pvc.accessMode is ReadWriteOnce",
    ),
    (
        "polylith-small-values",
        ["services.mediaapi.autoscaling.enabled=true"],
        "(services.mediaapi.autoscaling is enabled, up to 4 replicas), but media.pvc.accessMode is ReadWriteOnce",
    ),
    (
        "polylith-scaled-values",
        ["media.store=pvc", "media.pvc.accessMode=ReadWriteOncePod"],
        "but media.pvc.accessMode is ReadWriteOncePod: every mediaapi pod mounts the one media volume",
    ),
    ("polylith-scaled-values", ["media.s3.bucket="], "media.s3.bucket is required when media.store is s3"),
    ("monolith-values", ["media.store=s3"], "media.s3.bucket is required when media.store is s3"),
    ("polylith-scaled-values", ["media.s3.accessKeyId="], "media.s3.accessKeyId and media.s3.secretAccessKeySecret.name go together"),
    ("polylith-scaled-values", ["media.s3.secretAccessKeySecret.key="], "media.s3.secretAccessKeySecret.key is required"),
    ("polylith-small-values", ["media.store=fs"], "media.store must be pvc or s3"),
    ("polylith-small-values", ["media.pvc.accessMode=RWX"], "media.pvc.accessMode must be ReadWriteOnce, ReadWriteOncePod or ReadWriteMany"),
    ("polylith-small-values", ["media.maxUploadBytes=0"], "media.maxUploadBytes must be greater than 0"),
]


class Checks:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{what}{': ' + detail if detail else ''}")
            print(f"  FAIL {what}{': ' + detail if detail else ''}")
        return ok


# --- Ganglion's options -----------------------------------------------------


def option_paths(ganglion: str) -> set[str]:
    """Every option path `ganglion generate-config` shows, set or commented
    out; `services.*` stands for any service, `[]` for an element of a list
    of tables."""
    text = run([ganglion, "generate-config"]).stdout
    paths = set(flatten(tomllib.loads(text)))
    # The options without a default are listed commented out, under
    # commented table headers.
    section = None
    commented = text.split("# Options with no default", 1)[1]
    for line in commented.splitlines():
        line = line.strip()
        header = re.match(r"^#\s*\[(\[?)([A-Za-z0-9_.]+)\]?\]", line)
        if header:
            section = header.group(2) + ("[]" if header.group(1) else "")
            continue
        option = re.match(r"^#\s*([a-z0-9_]+)\s*=", line)
        if option and section:
            paths.add(f"{section}.{option.group(1)}")
    return {normalize(p) for p in paths}


def normalize(path: str) -> str:
    parts = path.split(".")
    if len(parts) > 1 and parts[0] == "services":
        parts[1] = "*"
    return ".".join(parts)


def flatten(table: dict, prefix: str = ""):
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            if not value:
                yield path
            yield from flatten(value, path + ".")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            yield path
            for element in value:
                yield from flatten(element, path + "[].")
        else:
            yield path


def env_option(name: str) -> str:
    """The option a GANGLION_ variable sets, as the loader reads it."""
    return ".".join(part.lower() for part in name[len("GANGLION_") :].split("__"))


# --- Manifests --------------------------------------------------------------


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict], kind: str, name: str) -> dict | None:
    return next((d for d in by_kind(docs, kind) if d["metadata"]["name"] == name), None)


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def component(doc: dict) -> str:
    return doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def config_of(docs: list[dict]) -> tuple[str, dict]:
    maps = [d for d in by_kind(docs, "ConfigMap") if "ganglion.toml" in d.get("data", {})]
    assert len(maps) == 1, "one ConfigMap with ganglion.toml"
    text = maps[0]["data"]["ganglion.toml"]
    return text, tomllib.loads(text)


def effective_env(container: dict, pod_name: str) -> dict[str, str]:
    """The container's environment as the kubelet makes it: fields and
    secrets resolved (secrets to placeholders), $(VAR) of earlier variables
    expanded."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            value = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m.group(1), m.group(0)),
                var["value"],
            )
        else:
            source = var["valueFrom"]
            if "secretKeyRef" in source:
                value = "secretvalue"
            else:
                field = source["fieldRef"]["fieldPath"]
                value = {
                    "metadata.name": pod_name,
                    "status.podIP": "10.1.2.3",
                    "metadata.labels['apps.kubernetes.io/pod-index']": pod_name.rsplit("-", 1)[-1],
                }[field]
        env[var["name"]] = value
    return env


def run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs `command`; with no `env`, in ours minus any GANGLION_ variable
    (ganglion would read it as an option)."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GANGLION_")}
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


# --- The checks -------------------------------------------------------------


def check_render(name: str, docs: list[dict], c: Checks, ganglion: str, options: set[str], routes: list[str]):
    expected = EXPECTED[name]
    mode = expected["mode"]
    toml_text, config = config_of(docs)
    pods = workloads(docs)
    components = {component(w): w for w in pods}

    # Replicas per service.
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind(docs, "HorizontalPodAutoscaler")}
    c.check(
        set(components) == set(expected["replicas"]),
        "one workload per service",
        f"{sorted(components)} != {sorted(expected['replicas'])}",
    )
    for service, want in expected["replicas"].items():
        workload = components.get(service)
        if workload is None:
            continue
        hpa = hpas.get(workload["metadata"]["name"])
        if isinstance(want, tuple):
            got = hpa and (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])
            c.check(got == want, f"{service}: autoscaled {want}", f"got {got}")
            c.check("replicas" not in workload["spec"], f"{service}: the HPA alone sets replicas")
        else:
            c.check(
                workload["spec"].get("replicas") == want and hpa is None,
                f"{service}: {want} replicas",
                f"got {workload['spec'].get('replicas')}, hpa {bool(hpa)}",
            )

    # Probes, ports, environment hygiene on every long-running container.
    for workload in pods:
        spec = workload["spec"]["template"]["spec"]
        who = f"{workload['kind']}/{workload['metadata']['name']}"
        c.check(spec.get("enableServiceLinks") is False, f"{who}: no service links in the environment")
        c.check(spec.get("automountServiceAccountToken") is False, f"{who}: no API token mounted")
        for container in spec["containers"]:
            ports = {p["name"] for p in container.get("ports", [])}
            c.check("operator" in ports, f"{who}: operator port declared")
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
                got = container.get(probe, {}).get("httpGet", {})
                c.check(
                    got.get("path") == path and got.get("port") == "operator",
                    f"{who}: {probe} on {path} at the operator port",
                    str(got),
                )

    # Every GANGLION_ variable and TOML key is a real option.
    toml_options = {normalize(p) for p in flatten(config)}
    unknown = sorted(p for p in toml_options if p not in options)
    c.check(not unknown, f"{len(toml_options)} TOML keys are options of `ganglion generate-config`", str(unknown))
    set_env = set()
    for workload in pods + by_kind(docs, "Job"):
        spec = workload["spec"]["template"]["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            for var in container.get("env", []):
                if var["name"].startswith("GANGLION_"):
                    set_env.add(var["name"])
    unknown = sorted(v for v in set_env if normalize(env_option(v)) not in options)
    c.check(not unknown, f"{len(set_env)} GANGLION_ variables are options", str(unknown))

    # Each process's whole configuration passes `ganglion check-config`.
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "ganglion.toml"
        config_file.write_text(toml_text)
        for workload in pods:
            check_process_config(workload, docs, config_file, c, ganglion)
        for job in by_kind(docs, "Job"):
            for container in job["spec"]["template"]["spec"].get("initContainers", []):
                env = effective_env(container, "job")
                env["PATH"] = os.environ.get("PATH", "")
                result = run([ganglion, "check-config"], env=env)
                c.check(result.returncode == 0, f"Job {job['metadata']['name']}: its configuration loads", result.stderr.strip())

    # The signing key and the internal secret: in a Secret, mounted only where used.
    check_secrets(docs, c, mode)

    # NetworkPolicies cover every process.
    check_policies(docs, pods, c, mode)

    # The Ingress reaches every route the gateway forwards; only public ports face outside.
    check_ingress(docs, c, mode, routes)
    check_public_services(docs, c, mode)

    c.check(config["log"]["partitions"] == expected["partitions"], f"log.partitions = {expected['partitions']}")
    check_media(docs, config, components, hpas, c, mode, expected["media"])
    if mode == "polylith":
        check_polylith(docs, config, components, hpas, c, expected)
    else:
        check_monolith(docs, config, components, c)


def check_process_config(workload: dict, docs: list[dict], config_file: Path, c: Checks, ganglion: str):
    who = f"{workload['kind']}/{workload['metadata']['name']}"
    spec = workload["spec"]["template"]["spec"]
    container = spec["containers"][0]
    args = container["args"]
    c.check(
        container["command"] == ["ganglion"] and len(args) == 3 and args[0] == "--config" and args[2] in PERSONALITIES,
        f"{who}: runs `ganglion --config FILE <personality>`",
        str(container["command"] + args),
    )
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    config_dir = os.path.dirname(args[1])
    volume = volumes.get(mounts.get(config_dir, ""), {})
    c.check(
        volume.get("configMap", {}).get("name") == f"{FULLNAME}-config",
        f"{who}: its --config is the rendered ConfigMap",
    )
    pod_name = f"{workload['metadata']['name']}-0"
    env = effective_env(container, pod_name)
    env["PATH"] = os.environ.get("PATH", "")
    result = run([ganglion, "--config", str(config_file), "check-config"], env=env)
    c.check(result.returncode == 0, f"{who}: `ganglion check-config` accepts its configuration", result.stderr.strip())


def check_secrets(docs: list[dict], c: Checks, mode: str):
    key_pattern = re.compile(r"ed25519 a_[A-Za-z0-9_]+ [A-Za-z0-9+/=]{40,}")
    for config_map in by_kind(docs, "ConfigMap"):
        text = yaml.safe_dump(config_map)
        c.check(not key_pattern.search(text), f"ConfigMap {config_map['metadata']['name']}: no signing key in it")
        c.check(
            not any("signing.key" == k or "internal.secret" == k for k in config_map.get("data", {})),
            f"ConfigMap {config_map['metadata']['name']}: no key files in it",
        )
    # Key material given in the values appears in a Secret only.
    for secret in by_kind(docs, "Secret"):
        for key, value in secret.get("data", {}).items():
            raw = base64.b64decode(value).decode()
            for other in docs:
                if other is secret:
                    continue
                text = yaml.safe_dump(other)
                c.check(
                    raw not in text and value not in text,
                    f"{key} of Secret {secret['metadata']['name']} appears nowhere else ({other['kind']}/{other['metadata']['name']})",
                )
    for workload in workloads(docs):
        name = component(workload)
        spec = workload["spec"]["template"]["spec"]
        items = []
        for volume in spec["volumes"]:
            if volume.get("secret", {}).get("secretName", "").endswith("keys"):
                items += [i["key"] for i in volume["secret"].get("items", [])]
        want_signing = name in WITH_SIGNING_KEY
        c.check(
            ("signing.key" in items) == want_signing,
            f"{name}: the signing key {'mounted (it signs)' if want_signing else 'not mounted (it signs nothing)'}",
            str(items),
        )
        if mode == "polylith":
            c.check("internal.secret" in items, f"{name}: internal secret mounted")
        for container in spec["containers"]:
            for var in container.get("env", []):
                c.check(
                    "value" not in var or not key_pattern.search(var["value"]),
                    f"{name}: no key in the environment ({var['name']})",
                )


def check_policies(docs: list[dict], pods: list[dict], c: Checks, mode: str):
    policies = by_kind(docs, "NetworkPolicy")
    c.check(bool(policies), "NetworkPolicies are rendered")
    for workload in pods:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        covering = [
            p
            for p in policies
            if all(labels.get(k) == v for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())
            and "Ingress" in p["spec"].get("policyTypes", [])
        ]
        c.check(bool(covering), f"{component(workload)}: a NetworkPolicy governs its ingress")
        if mode != "polylith" or not covering:
            continue
        name = component(workload)
        for rule in covering[0]["spec"]["ingress"]:
            ports = {p["port"] for p in rule.get("ports", [])}
            peers = rule.get("from")
            if "http" in ports and name != "gateway":
                c.check(
                    peers is not None
                    and len(peers) == 1
                    and peers[0].get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "gateway"
                    and "namespaceSelector" not in peers[0],
                    f"{name}: only the gateway reaches its HTTP port",
                    str(peers),
                )
            if "grpc" in ports:
                ok = peers is not None and len(peers) == 1
                if ok:
                    selector = peers[0].get("podSelector", {})
                    components = next(
                        (e["values"] for e in selector.get("matchExpressions", []) if e["key"] == "app.kubernetes.io/component"),
                        [],
                    )
                    ok = (
                        "namespaceSelector" not in peers[0]
                        and selector.get("matchLabels", {}).get("app.kubernetes.io/instance") == RELEASE
                        and set(components) <= PERSONALITIES
                    )
                c.check(ok, f"{name}: only Ganglion processes reach its gRPC port", str(peers))
            c.check(ports <= {"grpc", "http", "operator"}, f"{name}: policy names its own ports only", str(ports))


def check_public_services(docs: list[dict], c: Checks, mode: str):
    """Only ClusterIP Services carry operator ports; a Service that may face
    the outside carries public ports alone."""
    for service in by_kind(docs, "Service"):
        ports = {p["name"] for p in service["spec"]["ports"]}
        kind = service["spec"].get("type", "ClusterIP")
        if kind != "ClusterIP":
            public = {"http"} if mode == "polylith" else {"http", "federation"}
            c.check(ports <= public, f"Service {service['metadata']['name']} ({kind}): public ports only", str(ports))
            component = service["spec"]["selector"]["app.kubernetes.io/component"]
            c.check(component in ("gateway", "monolith"), f"Service {service['metadata']['name']} ({kind}) fronts the {component}")


def check_ingress(docs: list[dict], c: Checks, mode: str, routes: list[str]):
    ingresses = by_kind(docs, "Ingress")
    c.check(bool(ingresses), "an Ingress is rendered")
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    paths = {}
    for ingress in ingresses:
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                paths[path["path"]] = backend
                service = services.get(backend["name"])
                ports = {p["name"] for p in service["spec"]["ports"]} if service else set()
                c.check(backend["port"]["name"] in ports, f"Ingress {path['path']} -> {backend['name']}:{backend['port']['name']} exists")
    want = {"/_matrix/client", "/_matrix/federation", "/_matrix/key", "/_matrix/media", "/.well-known/matrix"}
    c.check(want <= set(paths), "Ingress routes client, federation, key, media and .well-known paths", str(sorted(paths)))
    for route in routes:
        c.check(
            any(route == p or route.startswith(p + "/") for p in paths),
            f"route {route} is reachable through the Ingress",
        )
    if mode == "polylith":
        c.check(
            all(b["name"] == f"{FULLNAME}-gateway" and b["port"]["name"] == "http" for b in paths.values()),
            "every Ingress path goes to the gateway",
        )
    else:
        for path, backend in paths.items():
            port = "federation" if path in ("/_matrix/federation", "/_matrix/key") else "http"
            c.check(backend["port"]["name"] == port, f"monolith: {path} goes to its {port} listener")


def check_polylith(docs, config, components, hpas, c: Checks, expected):
    partitions = config["log"]["partitions"]
    c.check(config["log"]["backend"] == "kafka", "polylith: the log is Kafka")
    syncapi = components["syncapi"]
    c.check(syncapi["kind"] == "StatefulSet", "syncapi is a StatefulSet")
    for name in STATELESS + WRITERS:
        c.check(components[name]["kind"] == "Deployment", f"{name} is a Deployment")
    for name in STATELESS:
        c.check(
            f"{FULLNAME}-{name}" in {p["metadata"]["name"] for p in by_kind(docs, "PodDisruptionBudget")},
            f"{name} has a PodDisruptionBudget",
        )
    for name in WRITERS:
        workload = components[name]
        hpa = hpas.get(workload["metadata"]["name"])
        most = hpa["spec"]["maxReplicas"] if hpa else workload["spec"]["replicas"]
        c.check(most <= partitions, f"{name}: at most {partitions} replicas (partitions)", f"up to {most}")

    # Every replica listed in the configuration is a Service or a pod of the
    # syncapi's StatefulSet, at a port that Service has.
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    for name in SERVICES:
        replicas = config["services"][name]["replicas"]
        ports = {"address": "grpc", "http_address": "http", "operator_address": "operator"}
        if name == "syncapi":
            count = syncapi["spec"]["replicas"]
            headless = services.get(syncapi["spec"]["serviceName"])
            c.check(
                headless is not None and headless["spec"].get("clusterIP") == "None",
                "syncapi: its StatefulSet's Service is headless (a DNS name per pod)",
            )
            c.check(len(replicas) == count, f"syncapi: every one of its {count} pods is listed", str(len(replicas)))
            for i, replica in enumerate(replicas):
                pod = f"{syncapi['metadata']['name']}-{i}"
                host = f"{pod}.{syncapi['spec']['serviceName']}.{NAMESPACE}.svc.cluster.local"
                c.check(replica.get("name") == pod, f"syncapi replica {i} is named after its pod")
                for key, port in ports.items():
                    want = f"http://{host}:{container_port(syncapi, port)}"
                    c.check(replica.get(key) == want, f"syncapi replica {i}: {key}", f"{replica.get(key)} != {want}")
        else:
            service = services.get(f"{FULLNAME}-{name}")
            c.check(len(replicas) == 1 and service is not None, f"{name}: its Service is its one listed replica")
            if not service:
                continue
            service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
            host = f"{FULLNAME}-{name}.{NAMESPACE}.svc"
            for key, port in ports.items():
                if key == "http_address" and name not in WITH_HTTP:
                    c.check(key not in replicas[0], f"{name}: no HTTP address (no public routes)")
                    continue
                want = f"http://{host}:{service_ports.get(port)}"
                c.check(replicas[0].get(key) == want, f"{name}: {key} is its Service", f"{replicas[0].get(key)} != {want}")
                target = next(p["targetPort"] for p in service["spec"]["ports"] if p["name"] == port)
                c.check(
                    service_ports[port] == container_port(components[name], target),
                    f"{name}: Service port {port} is the container's",
                )
    gateway = services.get(f"{FULLNAME}-gateway")
    c.check(gateway is not None and "http" in {p["name"] for p in gateway["spec"]["ports"]}, "the gateway has a Service")

    # Per-pod settings.
    env = {v["name"]: v for v in components["roomserver"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    c.check(
        env.get("GANGLION_SERVICES__ROOMSERVER__ADDRESS", {}).get("value", "").startswith("http://$(POD_IP):"),
        "roomserver: outcomes come back to the pod that accepted the input (its own address)",
    )
    sync_container = syncapi["spec"]["template"]["spec"]["containers"][0]
    env = {v["name"]: v for v in sync_container["env"]}
    c.check(
        env.get("GANGLION_SERVICES__SYNCAPI__REPLICA_ID", {}).get("value") == "$(POD_NAME)",
        "syncapi: each replica has its own replica_id",
    )
    url = env.get("GANGLION_SERVICES__SYNCAPI__DATABASE_URL", {}).get("value")
    if expected["syncapi_database"] == "postgres":
        c.check(
            url is not None and url.endswith("_$(POD_INDEX)") and
            env.get("POD_INDEX", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            == "metadata.labels['apps.kubernetes.io/pod-index']",
            "syncapi: each replica's database is named after its ordinal",
            str(url),
        )
        c.check(
            all(v["name"] != "data" or "emptyDir" in v for v in syncapi["spec"]["template"]["spec"]["volumes"]),
            "syncapi on PostgreSQL: no volume claims",
        )
    else:
        claims = [t["metadata"]["name"] for t in syncapi["spec"].get("volumeClaimTemplates", [])]
        mounts = {m["name"]: m["mountPath"] for m in sync_container["volumeMounts"]}
        c.check(
            url is None and claims == ["data"] and mounts.get("data") == config["data_dir"],
            "syncapi on SQLite: each replica's database on a volume claim of its own (data_dir)",
        )
    for name in SERVICES:
        if name == "syncapi":
            continue
        container = components[name]["spec"]["template"]["spec"]["containers"][0]
        names = [v["name"] for v in container["env"]]
        want = f"GANGLION_SERVICES__{name.upper()}__DATABASE_URL"
        c.check(want in names, f"{name}: its database URL is set")
        others = [n for n in names if n.endswith("__DATABASE_URL") and n != want]
        c.check(not others, f"{name}: no other service's database URL", str(others))
    for name, workload in components.items():
        c.check(workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 25, f"{name}: time to drain on SIGTERM")


def check_media(docs, config, components, hpas, c: Checks, mode: str, want: dict, label: str = "media"):
    """The process that keeps media (the mediaapi, or the monolith) has the
    store of `want` in its environment: a directory on a writable volume (a
    claim every mediaapi pod mounts; the monolith's own volume), or an S3
    bucket with its secret key in a file from a read-only Secret volume. No
    other process has a media store; every process reads the upload limit
    (the gateway's body limit for media)."""
    keeper_name = "mediaapi" if mode == "polylith" else "monolith"
    keeper = components.get(keeper_name)
    if not c.check(keeper is not None, f"{label}: the {keeper_name} is rendered"):
        return
    section = config.get("media", {})
    c.check(
        section.get("max_upload_bytes") == want["max_upload_bytes"] and section.get("user_quota_bytes") == want["user_quota_bytes"],
        f"{label}: max_upload_bytes {want['max_upload_bytes']} and user_quota_bytes {want['user_quota_bytes']} in the configuration every process reads",
        str(section),
    )
    spec = keeper["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {v["name"]: v.get("value") for v in container["env"] if v["name"].startswith("GANGLION_MEDIA__")}
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = container["volumeMounts"]
    claims = {p["metadata"]["name"]: p for p in by_kind(docs, "PersistentVolumeClaim")}
    c.check(
        container["securityContext"].get("readOnlyRootFilesystem") is True,
        f"{label}: the {keeper_name}'s root file system stays read-only",
    )
    for name, workload in components.items():
        if workload is keeper:
            continue
        other = workload["spec"]["template"]["spec"]
        names = [v["name"] for v in other["containers"][0]["env"] if v["name"].startswith("GANGLION_MEDIA__")]
        c.check(not names, f"{label}: {name} has no media store", str(names))
        c.check(
            not any("persistentVolumeClaim" in v for v in other["volumes"]),
            f"{label}: {name} mounts no volume claim",
        )
    strategy = keeper["spec"].get("strategy", {}).get("type")

    if want["store"] == "pvc":
        path = env.get("GANGLION_MEDIA__PATH")
        c.check(env.get("GANGLION_MEDIA__STORE") == "fs" and bool(path), f"{label}: the fs store at GANGLION_MEDIA__PATH", str(env))
        c.check(not any(k.startswith("GANGLION_MEDIA__S3__") for k in env), f"{label}: no S3 settings with the pvc store", str(env))
        if not path:
            return
        # The mount that holds the path: the deepest one at it or above it.
        holder = max(
            (m for m in mounts if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")),
            key=lambda m: len(m["mountPath"]),
            default=None,
        )
        c.check(
            holder is not None and not holder.get("readOnly", False),
            f"{label}: media.path {path} is on a writable mount",
            str(holder),
        )
        if holder is None:
            return
        if mode == "polylith":
            claim = volumes.get(holder["name"], {}).get("persistentVolumeClaim", {}).get("claimName")
            want_claim = want["claim"] or f"{FULLNAME}-media"
            c.check(
                holder["mountPath"] == path and claim == want_claim,
                f"{label}: the mediaapi mounts the claim {want_claim} at media.path",
                f"{holder['mountPath']}: {claim}",
            )
            made = claims.get(want_claim)
            if want["claim"]:
                c.check(made is None and not claims, f"{label}: an existing claim is used, none made", str(sorted(claims)))
            else:
                c.check(
                    made is not None and made["spec"]["accessModes"] == [want["access"]],
                    f"{label}: the chart makes the claim {want_claim} ({want['access']})",
                    str(made and made["spec"]),
                )
                c.check(
                    made is not None and made["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep",
                    f"{label}: helm uninstall keeps the media claim",
                )
            shared = want["access"] == "ReadWriteMany"
            c.check(
                strategy == ("RollingUpdate" if shared else "Recreate"),
                f"{label}: the mediaapi rolls with {'RollingUpdate (a shared volume)' if shared else 'Recreate (the volume attaches to one node at a time)'}",
                str(strategy),
            )
            if not shared:
                hpa = hpas.get(keeper["metadata"]["name"])
                c.check(
                    keeper["spec"].get("replicas") == 1 and (hpa is None or hpa["spec"]["maxReplicas"] <= 1),
                    f"{label}: one mediaapi pod on a {want['access']} volume",
                )
        else:
            templates = [t["metadata"]["name"] for t in keeper["spec"].get("volumeClaimTemplates", [])]
            c.check(
                holder["name"] in templates and path.startswith(config["data_dir"].rstrip("/") + "/"),
                f"{label}: the monolith's media under data_dir, on its volume claim",
                f"{path} on {holder['name']}",
            )
    else:
        c.check(
            env.get("GANGLION_MEDIA__STORE") == "s3" and env.get("GANGLION_MEDIA__S3__BUCKET") == want["bucket"],
            f"{label}: the S3 store, bucket {want['bucket']}",
            str(env),
        )
        for option, key in (("region", "REGION"), ("endpoint", "ENDPOINT"), ("prefix", "PREFIX"), ("access_key_id", "ACCESS_KEY_ID")):
            c.check(
                env.get(f"GANGLION_MEDIA__S3__{key}") == want[option],
                f"{label}: media.s3.{option} is {want[option]!r}",
                str(env.get(f"GANGLION_MEDIA__S3__{key}")),
            )
        c.check(
            env.get("GANGLION_MEDIA__S3__ALLOW_HTTP") == ("true" if want["allow_http"] else "false"),
            f"{label}: media.s3.allow_http is {want['allow_http']}",
        )
        c.check("GANGLION_MEDIA__PATH" not in env and not claims, f"{label}: no media volume with the s3 store", str(sorted(claims)))
        secret_file = env.get("GANGLION_MEDIA__S3__SECRET_ACCESS_KEY_FILE")
        secret_volumes = [
            v for v in spec["volumes"]
            if want["secret"] and v.get("secret", {}).get("secretName") == want["secret"][0]
        ]
        if want["secret"]:
            name, key = want["secret"]
            mount = secret_file and next((m for m in mounts if m["mountPath"] == os.path.dirname(secret_file)), None)
            c.check(
                bool(mount) and mount.get("readOnly") is True,
                f"{label}: the secret key's directory is a read-only mount",
                f"{secret_file}: {mount}",
            )
            volume = volumes.get(mount["name"], {}) if mount else {}
            items = volume.get("secret", {}).get("items", [])
            c.check(
                volume.get("secret", {}).get("secretName") == name
                and items == [{"key": key, "path": os.path.basename(secret_file)}],
                f"{label}: GANGLION_MEDIA__S3__SECRET_ACCESS_KEY_FILE is key {key} of Secret {name}",
                str(volume),
            )
        else:
            c.check(secret_file is None and not secret_volumes, f"{label}: no secret key file without credentials")
        if mode == "polylith":
            c.check(strategy == "RollingUpdate", f"{label}: the mediaapi rolls pod by pod (a bucket is shared)", str(strategy))


def check_media_variants(helm: str, chart: str, c: Checks, ganglion: str):
    for values, settings, want in MEDIA_VARIANTS:
        label = f"media of {values} with {' '.join(settings)}"
        command = [helm, "template", RELEASE, chart, "-n", NAMESPACE, "-f", f"{chart}/ci/{values}.yaml"]
        for setting in settings:
            command += ["--set", setting]
        result = run(command)
        if not c.check(result.returncode == 0, f"{label}: renders", result.stderr.strip()[-300:]):
            continue
        docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        toml_text, config = config_of(docs)
        components = {component(w): w for w in workloads(docs)}
        hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind(docs, "HorizontalPodAutoscaler")}
        mode = EXPECTED[values]["mode"]
        check_media(docs, config, components, hpas, c, mode, want, label)
        keeper = components.get("mediaapi" if mode == "polylith" else "monolith")
        if keeper is not None:
            with tempfile.TemporaryDirectory() as tmp:
                config_file = Path(tmp) / "ganglion.toml"
                config_file.write_text(toml_text)
                check_process_config(keeper, docs, config_file, c, ganglion)


def check_monolith(docs, config, components, c: Checks):
    monolith = components.get("monolith")
    c.check(len(components) == 1 and monolith is not None, "monolith: one workload")
    if monolith is None:
        return
    c.check(monolith["kind"] == "StatefulSet" and monolith["spec"]["replicas"] == 1, "monolith: one pod")
    c.check(config["log"]["backend"] == "embedded", "monolith: the embedded log")
    c.check("services" not in config, "monolith: no polylith addresses")
    container = monolith["spec"]["template"]["spec"]["containers"][0]
    c.check(
        not any(v["name"].endswith("__DATABASE_URL") for v in container["env"]),
        "monolith: SQLite in data_dir (no database URL)",
    )
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = [t["metadata"]["name"] for t in monolith["spec"].get("volumeClaimTemplates", [])]
    c.check(claims == ["data"] and mounts.get("data") == config["data_dir"], "monolith: data_dir on a volume claim")
    c.check(not by_kind(docs, "HorizontalPodAutoscaler"), "monolith: no autoscaler")
    c.check(not by_kind(docs, "Job"), "monolith with supplied keys: no key Job")
    c.check(
        any(s["spec"].get("type") == "LoadBalancer" for s in by_kind(docs, "Service")),
        "monolith: its public Service is rendered",
    )


def container_port(workload: dict, name: str) -> int | None:
    for container in workload["spec"]["template"]["spec"]["containers"]:
        for port in container.get("ports", []):
            if port["name"] == name:
                return port["containerPort"]
    return None


def check_refused(helm: str, chart: str, c: Checks):
    for values, settings, words in REFUSED:
        command = [helm, "template", RELEASE, chart, "-n", NAMESPACE, "-f", f"{chart}/ci/{values}.yaml"]
        for setting in settings:
            command += ["--set", setting]
        result = run(command)
        c.check(
            result.returncode != 0 and words in result.stderr,
            f"refused: {values} with {' '.join(settings)} ({words!r})",
            result.stderr.strip()[-300:] if result.returncode else "rendered without error",
        )


def check_job(docs: list[dict], c: Checks):
    jobs = by_kind(docs, "Job")
    c.check(len(jobs) == 1, "the key Job is rendered (no keys given)")
    for job in jobs:
        hooks = job["metadata"]["annotations"].get("helm.sh/hook", "")
        c.check("pre-install" in hooks, "the key Job is a pre-install hook")
        spec = job["spec"]["template"]["spec"]
        script = " ".join(spec["initContainers"][0]["command"])
        c.check("ganglion generate-keys" in script, "the key Job runs `ganglion generate-keys`")
        c.check(
            "--server-side" in spec["containers"][0]["command"],
            "the key Job applies the Secret without replacing an existing key",
        )
        existing = next(v for v in spec["volumes"] if v["name"] == "existing")
        c.check(existing["secret"].get("optional") is True, "the key Job reads an existing Secret first")


def main() -> int:
    global RELEASE, NAMESPACE, FULLNAME, SERVICES, PERSONALITIES
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rendered", required=True, help="directory of <values name>.yaml renders")
    parser.add_argument("--ganglion", required=True)
    parser.add_argument("--helm", required=True)
    parser.add_argument("--chart", required=True)
    parser.add_argument("--release", default=RELEASE, help="the release name the renders were made with")
    parser.add_argument("--namespace", default=NAMESPACE, help="the namespace the renders were made with")
    args = parser.parse_args()
    RELEASE, NAMESPACE = args.release, args.namespace
    FULLNAME = f"{RELEASE}-ganglion"

    options = option_paths(args.ganglion)
    SERVICES = list(tomllib.loads(run([args.ganglion, "generate-config"]).stdout).get("services", {}))
    PERSONALITIES = set(SERVICES) | {"gateway", "monolith"}
    if not SERVICES:
        print("ganglion generate-config lists no services", file=sys.stderr)
        return 1
    upstreams = [line.split("\t")[:2] for line in run([args.ganglion, "routes"]).stdout.split("\n") if "\t" in line]
    routes = [path for _, path in upstreams]
    if not options or not routes:
        print("ganglion generate-config or routes printed nothing", file=sys.stderr)
        return 1
    print(f"{len(options)} options from `ganglion generate-config`, {len(routes)} routes from `ganglion routes`")

    c = Checks()
    media_routes = [path for upstream, path in upstreams if upstream == "mediaapi"]
    c.check(
        all(any(p.startswith(prefix) for p in media_routes) for prefix in ("/_matrix/media/", "/_matrix/client/v1/media/")),
        "the gateway forwards the media routes to the mediaapi (`ganglion routes`)",
        str(media_routes),
    )
    rendered = sorted(Path(args.rendered).glob("*.yaml"))
    c.check({p.stem for p in rendered} == set(EXPECTED), "a render for every values file", str([p.stem for p in rendered]))
    for path in rendered:
        before = (c.passed, len(c.failures))
        docs = load(path)
        print(f"{path.stem}: {len(docs)} objects")
        if path.stem not in EXPECTED:
            continue
        check_render(path.stem, docs, c, args.ganglion, options, routes)
        if path.stem == "polylith-small-values":
            check_job(docs, c)
        for monitor in by_kind(docs, "ServiceMonitor"):
            endpoint = monitor["spec"]["endpoints"][0]
            c.check(endpoint["port"] == "operator" and endpoint["path"] == "/metrics", "ServiceMonitor scrapes /metrics on the operator port")
        print(f"  {c.passed - before[0]} checks passed, {len(c.failures) - before[1]} failed")
    before = (c.passed, len(c.failures))
    check_media_variants(args.helm, args.chart, c, args.ganglion)
    print(f"media variants: {c.passed - before[0]} checks passed, {len(c.failures) - before[1]} failed")
    before = (c.passed, len(c.failures))
    check_refused(args.helm, args.chart, c)
    print(f"refused values: {c.passed - before[0]} checks passed, {len(c.failures) - before[1]} failed")

    print(f"assertions: {c.passed} passed, {len(c.failures)} failed")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
