"""The checks of scripts/check-deploy.sh that need a parser: every option
the deployment files set is one the binary knows, with the type it has, and
the files agree with each other.

  python3 scripts/check-deploy.py GANGLION_BINARY COMPOSE_JSON...

COMPOSE_JSON: `docker-compose -f FILE config` output turned into JSON
(FILE:PATH pairs), so Compose's own resolution of anchors, merges and
variables is what is checked.

What is compared against what:
- the schema: `ganglion generate-config` (every option with a default),
  plus its commented list of options without one; services.<name> stands
  for every service, replicas for each replica's table;
- the sample TOML files in deploy/config: each key path in the schema with
  the same TOML type, and the whole file accepted by `ganglion check-config`
  (the loader rejects unknown keys, so a misspelt key fails there too);
- every GANGLION_* variable in the Containerfile, the Compose files and the
  systemd units: its key path in the schema, and each container's or
  unit's whole environment accepted by `ganglion check-config`;
- consistency: health checks probe the process's own operator port; every
  replica listed names a container of that name listening on those ports;
  each syncapi's replica_id is its listed name; each roomserver's address
  is its own; systemd units start the personality their config is for,
  stop after the drain has had its time, and keep data_dir in their
  StateDirectory.
"""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PERSONALITIES = {
    "monolith", "gateway", "clientapi", "roomserver", "syncapi", "userapi",
    "federationapi", "federationsender", "keyserver", "mediaapi",
}
# The longest a process keeps serving after SIGTERM before it closes its
# listeners: services/base/src/http.rs DRAIN_TIMEOUT (20 s), after the
# drain delay (operator.drain_delay_ms).
DRAIN_TIMEOUT_S = 20

failures = []


def fail(where, message):
    failures.append(f"{where}: {message}")


# --- the schema ---------------------------------------------------------


def toml_type(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def generalise(path):
    """services.<name>... -> services.*..."""
    parts = list(path)
    if len(parts) >= 2 and parts[0] == "services":
        parts[1] = "*"
    return tuple(parts)


def flatten(table, prefix=()):
    """Key paths of a parsed TOML document: (path, type). Arrays of tables
    (replicas) are entered: their keys are path + ("[]", key)."""
    for key, value in table.items():
        path = prefix + (key,)
        if isinstance(value, dict):
            yield path, "table"
            yield from flatten(value, path)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            yield path, "array"
            for item in value:
                yield from flatten(item, path + ("[]",))
        else:
            yield path, toml_type(value)


def schema_from(binary):
    text = subprocess.run([binary, "generate-config"], check=True,
                          capture_output=True, text=True).stdout
    marker = "# Options with no default"
    defaults, _, optional = text.partition(marker)
    schema = {}
    for path, kind in flatten(tomllib.loads(defaults)):
        schema[generalise(path)] = kind
    # The optional options are listed commented out: uncomment and parse.
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") else ""
        for line in optional.splitlines()[1:]
    )
    for path, kind in flatten(tomllib.loads(uncommented)):
        schema.setdefault(generalise(path), kind)
    # An empty `replicas = []` at its default says nothing of its entries'
    # types; the commented example does.
    if ("services", "*", "replicas", "[]", "address") not in schema:
        sys.exit("check-deploy: generate-config no longer lists the keys of a replica")
    return schema


def check_keys(where, table, schema):
    for path, kind in flatten(table):
        known = schema.get(generalise(path))
        dotted = ".".join(p for p in path if p != "[]")
        if known is None:
            fail(where, f"{dotted} is not an option of `ganglion generate-config`")
        elif known != kind and not (known == "array" and kind == "array"):
            fail(where, f"{dotted} is a {kind} here, a {known} in `ganglion generate-config`")


def env_key_path(name):
    """GANGLION_SERVICES__SYNCAPI__REPLICAS -> ('services', 'syncapi', 'replicas')"""
    return tuple(part.lower() for part in name[len("GANGLION_"):].split("__"))


def check_env_names(where, env, schema):
    for name in env:
        if not name.startswith("GANGLION_"):
            continue
        path = env_key_path(name)
        if generalise(path) not in schema:
            fail(where, f"{name} sets {'.'.join(path)}, which is not an option of `ganglion generate-config`")


def check_config(binary, where, env, config_file=None):
    """`ganglion check-config` with only this environment: the loader's own
    verdict (unknown keys and bad values are errors)."""
    args = [binary]
    if config_file:
        args += ["--config", str(config_file)]
    args.append("check-config")
    clean = {"PATH": "/usr/bin:/bin"}
    clean.update(env)
    result = subprocess.run(args, env=clean, capture_output=True, text=True, cwd="/")
    if result.returncode != 0:
        fail(where, "ganglion check-config: " + (result.stderr.strip() or result.stdout.strip()))


# --- effective settings, as the loader would see them --------------------


def parse_env_value(value):
    """An environment value as figment reads it (close enough for the
    values these files use: TOML scalars, arrays and inline tables)."""
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def settings(env, config_table=None):
    """A nested dict of the options set by a file and the environment."""
    merged = json.loads(json.dumps(config_table or {}))
    for name, value in env.items():
        if not name.startswith("GANGLION_"):
            continue
        node = merged
        path = env_key_path(name)
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = parse_env_value(value)
    return merged


def get(table, *path, default=None):
    for part in path:
        if not isinstance(table, dict) or part not in table:
            return default
        table = table[part]
    return table


def port_of(address):
    match = re.search(r":(\d+)(/.*)?$", str(address))
    return int(match.group(1)) if match else None


def host_of(url):
    match = re.match(r"https?://([^:/]+)", str(url))
    return match.group(1) if match else None


# The built-in defaults of the listeners, from the schema's own output.
def default_ports(binary):
    defaults = tomllib.loads(subprocess.run(
        [binary, "generate-config"], check=True, capture_output=True, text=True
    ).stdout.partition("# Options with no default")[0])
    return defaults


def operator_port(personality, effective, defaults):
    if personality in ("monolith", "gateway"):
        listen = get(effective, "operator", "listen") or defaults["operator"]["listen"]
    else:
        listen = get(effective, "services", personality, "operator_listen") or \
            defaults["services"][personality]["operator_listen"]
    return port_of(listen)


# --- the Containerfile ---------------------------------------------------


def image_env(containerfile):
    """The GANGLION_* variables the runtime image sets (ENV lines)."""
    text = containerfile.read_text().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.strip().startswith("ENV "):
            for name, value in re.findall(r"(GANGLION_\w+)=(\S+)", line):
                env[name] = value
    if not env:
        fail(str(containerfile), "no GANGLION_* ENV found (the check reads ENV lines)")
    return env


# --- Compose --------------------------------------------------------------


def is_ganglion(service):
    build = service.get("build") or {}
    image = str(service.get("image", ""))
    return "ganglion" in image or "Containerfile" in str(build.get("dockerfile", ""))


def personality_of(service):
    command = service.get("command") or ["monolith"]
    if isinstance(command, str):
        command = command.split()
    entrypoint = service.get("entrypoint")
    if entrypoint and entrypoint != ["ganglion"]:
        return None  # a script (the keys container): no server runs
    words = [w for w in command if not w.startswith("-")]
    return words[0] if words else "monolith"


def check_compose(binary, label, config, schema, base_env, defaults):
    services = config.get("services", {})
    listening = {}  # container -> its effective settings and personality
    for name, service in services.items():
        if not is_ganglion(service):
            continue
        where = f"{label} service {name}"
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        env_all = dict(base_env)
        env_all.update(env)
        check_env_names(where, env, schema)
        check_config(binary, where, env_all)
        personality = personality_of(service)
        if personality is None:
            continue
        if personality not in PERSONALITIES:
            fail(where, f"command {personality!r} is not a ganglion personality")
            continue
        effective = settings(env_all)
        listening[name] = (personality, effective)
        # The health check probes this process's own operator listener.
        raw_test = (service.get("healthcheck") or {}).get("test", [])
        test = " ".join(map(str, raw_test))
        # podman's Docker-compatible API splits a CMD-form check's arguments
        # at spaces (`bash -c "a b"` becomes `bash -c a b`: always passing).
        if raw_test and raw_test[0] == "CMD" and any(" " in str(a) for a in raw_test[1:]):
            fail(where, "a CMD-form health check with spaces in an argument: write it CMD-SHELL")
        probed = re.search(r"/dev/tcp/127\.0\.0\.1/(\d+)", test)
        expected = operator_port(personality, effective, defaults)
        if not probed:
            fail(where, "no health check on the operator listener")
        elif int(probed.group(1)) != expected:
            fail(where, f"the health check probes port {probed.group(1)}, the {personality}'s operator listener is {expected}")
        elif "/healthz" not in test:
            fail(where, "the health check does not ask /healthz")
        if personality != "monolith":
            grace = str(service.get("stop_grace_period", "10s"))
            seconds = int(re.sub(r"\D", "", grace) or 0) * (60 if grace.endswith("m") else 1)
            if seconds <= DRAIN_TIMEOUT_S + 2:
                fail(where, f"stop_grace_period {grace} leaves no room for the drain (2 s + up to {DRAIN_TIMEOUT_S} s)")
    # Every replica listed is a container that listens where it is said to.
    for name, (personality, effective) in listening.items():
        for service, section in (effective.get("services") or {}).items():
            for replica in section.get("replicas", []) if isinstance(section, dict) else []:
                where = f"{label} service {name}: services.{service}.replicas"
                host = host_of(replica.get("address"))
                target = listening.get(host)
                if target is None or target[0] != service:
                    fail(where, f"{replica.get('address')} is not a {service} container")
                    continue
                own = get(target[1], "services", service, default={})
                pairs = [("address", "listen"), ("http_address", "http_listen"),
                         ("operator_address", "operator_listen")]
                for listed, listen in pairs:
                    if listed in replica:
                        if host_of(replica[listed]) != host:
                            fail(where, f"{listed} {replica[listed]} is not on {host}")
                        actual = own.get(listen) or defaults["services"][service][listen]
                        if port_of(replica[listed]) != port_of(actual):
                            fail(where, f"{listed} {replica[listed]}: {host} listens on {actual}")
                if service == "syncapi" and replica.get("name") != own.get("replica_id"):
                    fail(where, f"replica {replica.get('name')!r} runs with replica_id {own.get('replica_id')!r}")
        if personality == "roomserver":
            address = get(effective, "services", "roomserver", "address")
            if host_of(address) != name:
                fail(f"{label} service {name}", f"services.roomserver.address {address} is not this container")
        if personality == "syncapi" and get(effective, "services", "syncapi", "replica_id") is None:
            fail(f"{label} service {name}", "a syncapi without replica_id (its consumer groups would be shared)")
    # PostgreSQL has room for every pool (each process opens up to
    # database_max_connections, default 10), with some to spare for
    # operator commands run beside them.
    pools = sum(
        get(e, "services", p, "database_max_connections", default=10)
        for p, e in listening.values()
        if str(get(e, "services", p, "database_url", default="")).startswith("postgres")
    )
    for name, service in services.items():
        if "postgres" not in str(service.get("image", "")) and name != "postgres":
            continue
        command = " ".join(map(str, service.get("command") or []))
        match = re.search(r"max_connections=(\d+)", command)
        limit = int(match.group(1)) if match else 100
        if pools + 10 > limit:
            fail(f"{label} service {name}", f"max_connections {limit}: the pools need {pools} (+10 to spare)")
    # Each syncapi replica has a database of its own.
    urls = [get(e, "services", "syncapi", "database_url")
            for p, e in listening.values() if p == "syncapi"]
    if len(urls) != len(set(urls)):
        fail(label, "two syncapi replicas share a database")


# --- systemd units --------------------------------------------------------


def unit_settings(path):
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values.setdefault(key.strip(), []).append(value.strip())
    return values


def seconds(value):
    match = re.fullmatch(r"(\d+)\s*(s|min|m)?", value)
    if not match:
        return None
    return int(match.group(1)) * (60 if match.group(2) in ("min", "m") else 1)


def check_units(binary, schema):
    for unit in sorted((ROOT / "deploy/systemd").glob("*.service")):
        where = f"deploy/systemd/{unit.name}"
        values = unit_settings(unit)
        start = values.get("ExecStart", [""])[0].split()
        match = re.search(r"--config\s+/etc/ganglion/(\S+)\.toml", " ".join(start))
        personality = start[-1] if start else ""
        if personality not in PERSONALITIES:
            fail(where, f"ExecStart runs {personality!r}, not a ganglion personality")
            continue
        if not match:
            fail(where, "ExecStart names no /etc/ganglion/*.toml")
            continue
        sample = ROOT / "deploy/config" / (
            "monolith.toml" if personality == "monolith" else f"polylith/{personality}.toml")
        if match.group(1) != personality:
            fail(where, f"reads /etc/ganglion/{match.group(1)}.toml, the {personality}'s is {personality}.toml")
        if not sample.exists():
            fail(where, f"no sample configuration {sample.relative_to(ROOT)}")
            continue
        env = {}
        for assignment in values.get("Environment", []):
            for name, value in re.findall(r'"?(\w+)=([^" ]*)"?', assignment):
                env[name] = value
        check_env_names(where, env, schema)
        ganglion_env = {k: v for k, v in env.items() if k.startswith("GANGLION_")}
        check_config(binary, where, ganglion_env, sample)
        config = settings(ganglion_env, tomllib.loads(sample.read_text()))
        if values.get("KillSignal") != ["SIGTERM"]:
            fail(where, "KillSignal is not SIGTERM")
        drain_ms = get(config, "operator", "drain_delay_ms",
                       default=0 if personality == "monolith" else 2000)
        stop = seconds(values.get("TimeoutStopSec", ["90s"])[0])
        if stop is None or stop <= drain_ms / 1000 + DRAIN_TIMEOUT_S:
            fail(where, f"TimeoutStopSec {values.get('TimeoutStopSec')} does not cover the drain "
                        f"({drain_ms} ms + up to {DRAIN_TIMEOUT_S} s)")
        state = values.get("StateDirectory", [None])[0]
        data_dir = get(config, "data_dir")
        if state is None or data_dir != f"/var/lib/{state}":
            fail(where, f"StateDirectory={state} but data_dir is {data_dir}")
        for key in ("User", "NoNewPrivileges", "ProtectSystem"):
            if key not in values:
                fail(where, f"no {key}=")


# --- main -----------------------------------------------------------------


def main():
    binary = sys.argv[1]
    schema = schema_from(binary)
    defaults = default_ports(binary)

    base_env = image_env(ROOT / "deploy/Containerfile")
    check_env_names("deploy/Containerfile", base_env, schema)
    check_config(binary, "deploy/Containerfile ENV", dict(
        base_env, GANGLION_CLIENT__REGISTRATION_REQUIRES_TOKEN="true"))

    samples = sorted((ROOT / "deploy/config").rglob("*.toml"))
    if len(samples) < 10:
        fail("deploy/config", f"{len(samples)} sample files; expected the monolith and 9 polylith processes")
    for sample in samples:
        where = str(sample.relative_to(ROOT))
        check_keys(where, tomllib.loads(sample.read_text()), schema)
        check_config(binary, where, {}, sample)

    for pair in sys.argv[2:]:
        label, _, path = pair.partition(":")
        check_compose(binary, label, json.loads(Path(path).read_text()), schema, base_env, defaults)

    check_units(binary, schema)

    checked = (f"{len(samples)} sample configs, {len(sys.argv) - 2} compose files, "
               f"{len(list((ROOT / 'deploy/systemd').glob('*.service')))} systemd units")
    if failures:
        for failure in failures:
            print(f"FAIL {failure}", file=sys.stderr)
        print(f"check-deploy: {len(failures)} problems in {checked}", file=sys.stderr)
        sys.exit(1)
    print(f"options and consistency: {checked} ok")


if __name__ == "__main__":
    main()
