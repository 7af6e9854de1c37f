"""The packaging files: docker-compose.yml, the Procfile, docker/Dockerfile and the example config.

No container engine is needed: the compose file is checked as data (and with `docker compose
config` where that command exists), the Procfile's commands are run with `--help` from this
virtualenv, and the example configuration is loaded by the product's own loader.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import esprima
import pytest
import yaml
from stagesync.protocol.routing import queues_of
from stagesync.settings import ConfigError, load_settings
from stagesync.settings.values import parse_rate_limit

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
PROCFILE = REPO / "Procfile"
DOCKERFILE = REPO / "docker" / "Dockerfile"
EXAMPLE_CONFIG = REPO / "docker" / "stagesync.example.yaml"
TRAFFIC_SCRIPT = REPO / "docker" / "traffic.py"
VENV_BIN = Path(sys.executable).parent

DATA_SERVICES = ("prod-mongo", "staging-mongo", "redis")
STAGESYNC_SERVICES = ("watcher", "worker", "flower", "beat")
REPLICA_SETS = {"prod-mongo": "rs-prod", "staging-mongo": "rs-staging"}
# Values for the variables docker-compose.yml requires (`${VAR:?message}`).
REQUIRED_ENV = {"STAGESYNC_PII_SECRET": "dummy-pii-secret", "FLOWER_BASIC_AUTH": "admin:dummy",
                "GRAFANA_ADMIN_PASSWORD": "dummy"}
# honcho's own pattern for a Procfile line (honcho/environ.py).
PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_]+):\s*(.+)$")
COMMAND_TIMEOUT = 120

MINIMAL_CONFIG = """\
prod: {uri: "mongodb://127.0.0.1:27017/?replicaSet=rs-prod"}
staging: {uri: "mongodb://127.0.0.1:27018/?replicaSet=rs-staging"}
redis_url: "redis://127.0.0.1:6379/0"
collections:
  - {name: orders, source: shop.orders, target: shop_staging.orders, business_key: [orderNumber]}
"""


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No STAGESYNC_* variable of the machine may change what these files are checked against."""
    for name in list(os.environ):
        if name.upper().startswith("STAGESYNC_"):
            monkeypatch.delenv(name)
    yield


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def command_of(service: dict[str, Any]) -> list[str]:
    """A service's command as argv (compose accepts a string or a list)."""
    command = service.get("command")
    assert command, "service has no command"
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(str(part) for part in test)


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):  # ["KEY=value", ...]
        environment = dict(item.split("=", 1) for item in environment)
    return {str(key): str(value) for key, value in environment.items()}


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}` (the forms used here)."""

    def replace(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        current = env.get(name)
        if operator in (":?", "?") and not current:
            raise KeyError(f"{name}: {argument}")
        if operator in (":-", "-") and not current:
            return argument
        return current or ""

    return _VARIABLE.sub(replace, value)


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    dependencies = service.get("depends_on") or {}
    if isinstance(dependencies, list):
        return {name: {"condition": "service_started"} for name in dependencies}
    return dependencies


def procfile() -> dict[str, str]:
    processes: dict[str, str] = {}
    for line in PROCFILE.read_text(encoding="utf-8").splitlines():
        match = PROCFILE_LINE.match(line)
        if match:
            assert match.group(1) not in processes, f"process {match.group(1)} defined twice"
            processes[match.group(1)] = match.group(2)
    return processes


def subprocess_env(config: Path | None = None, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.upper().startswith(("STAGESYNC_", "FLOWER_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    if config is not None:
        env["STAGESYNC_CONFIG"] = str(config)
    env.update(extra)
    return env


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    pairs = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        pairs.append((instruction.upper(), arguments.strip()))
    return pairs


# ------------------------------------------------------------------------------------------------
# (a) docker-compose.yml as data
# ------------------------------------------------------------------------------------------------


def test_compose_file_is_v2_style_and_has_every_service(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "Compose v2 needs no `version:` key (it is obsolete)"
    expected = {*DATA_SERVICES, *STAGESYNC_SERVICES, "traffic"}
    assert expected <= set(compose["services"]), expected - set(compose["services"])


def test_every_dependency_exists_and_waits_for_health(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for dependency, options in depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            if dependency in DATA_SERVICES:
                assert options.get("condition") == "service_healthy", (
                    f"{name} must wait until {dependency} is healthy, not merely started")
    watcher_needs = depends_on(services["watcher"])
    worker_needs = depends_on(services["worker"])
    for data_service in DATA_SERVICES:
        assert data_service in watcher_needs, f"watcher must depend on {data_service}"
        assert data_service in worker_needs, f"worker must depend on {data_service}"
    for name in ("flower", "beat"):
        assert "redis" in depends_on(services[name])


def test_data_services_have_healthchecks_with_a_grace_period(services: dict[str, Any]) -> None:
    for name in DATA_SERVICES:
        healthcheck = services[name].get("healthcheck")
        assert healthcheck, f"{name} needs a healthcheck"
        assert not healthcheck.get("disable"), name
        for key in ("start_period", "interval", "retries"):
            assert key in healthcheck, f"{name}.healthcheck.{key} is missing"
        assert int(healthcheck["retries"]) >= 5, name


@pytest.mark.parametrize("name", sorted(REPLICA_SETS))
def test_mongo_services_are_self_initiating_single_node_replica_sets(
    services: dict[str, Any], name: str
) -> None:
    service = services[name]
    replica_set = REPLICA_SETS[name]
    assert service["image"].startswith("mongo:7")
    argv = command_of(service)
    assert argv[argv.index("--replSet") + 1] == replica_set
    assert "--bind_ip_all" in argv
    check = healthcheck_text(service)
    assert "mongosh" in check
    # Initiates the set with the member host the other containers resolve (the service name)...
    assert "rs.initiate(" in check
    assert f"_id: '{replica_set}'" in check
    assert f"host: '{name}:27017'" in check
    # ...only when it has not been initiated yet, and turns healthy only on the PRIMARY:
    # `mongosh --eval` exits 0 whatever the expression's value, so the exit code is explicit.
    assert "NotYetInitialized" in check
    assert "isWritablePrimary" in check and "quit(" in check
    assert "$" not in check, "a `$` in a compose value is interpolated by compose"
    volumes = service.get("volumes") or []
    assert any(str(volume).endswith(":/data/db") for volume in volumes), "data must persist"


def test_mongo_healthcheck_script_is_valid_javascript(services: dict[str, Any]) -> None:
    """The script parses as JavaScript: a typo here would keep the service unhealthy forever.
    The parser is strict enough to refuse the script with one brace missing."""
    for name in REPLICA_SETS:
        script = services[name]["healthcheck"]["test"][-1]
        tree = esprima.parseScript(script)
        assert tree.body, name
        with pytest.raises(esprima.Error):
            esprima.parseScript(script.replace("}", "", 1))


def test_redis_persists_and_is_health_checked(compose: dict[str, Any],
                                              services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    argv = command_of(redis)
    assert argv[argv.index("--appendonly") + 1] == "yes"
    mounts = [str(volume) for volume in redis.get("volumes") or []]
    data_mount = next((mount for mount in mounts if mount.split(":")[1:2] == ["/data"]), None)
    assert data_mount, "Redis's /data must be a volume"
    assert data_mount.split(":")[0] in (compose.get("volumes") or {}), "declare the named volume"
    check = healthcheck_text(redis)
    assert "redis-cli" in check and "ping" in check


def test_stagesync_services_share_image_config_and_secret(services: dict[str, Any]) -> None:
    for name in (*STAGESYNC_SERVICES, "traffic"):
        build = services[name].get("build")
        assert build, f"{name} must build the stagesync image"
        assert (REPO / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    for name in STAGESYNC_SERVICES:
        service = services[name]
        environment = environment_of(service)
        config_path = environment.get("STAGESYNC_CONFIG")
        assert config_path == "/etc/stagesync/stagesync.yaml", name
        secret = environment.get("STAGESYNC_PII_SECRET", "")
        assert secret.startswith("${STAGESYNC_PII_SECRET:?"), (
            f"{name}: the PII secret must come from the environment and be required")
        mounts = [str(volume) for volume in service.get("volumes") or []]
        sources = [mount.split(":")[0] for mount in mounts
                   if mount.split(":")[1:2] == [config_path]]
        assert sources == ["./docker/stagesync.example.yaml"], f"{name}: {mounts}"
        assert (REPO / sources[0]).is_file()
        assert service.get("init") is True, f"{name}: PID 1 must forward signals"


def test_service_commands(services: dict[str, Any]) -> None:
    assert command_of(services["watcher"]) == ["stagesync", "watch"]
    worker = command_of(services["worker"])
    assert worker[:4] == ["celery", "-A", "stagesync.tasks", "worker"]
    assert worker[worker.index("-c") + 1] == "2"
    assert "--without-mingle" in worker
    assert "-Q" not in worker, "with no -Q a worker consumes every configured queue"
    assert command_of(services["flower"])[:4] == ["celery", "-A", "stagesync.tasks", "flower"]
    assert command_of(services["beat"])[:4] == ["celery", "-A", "stagesync.tasks", "beat"]
    assert services["watcher"].get("restart") == "unless-stopped"
    assert services["worker"].get("restart") == "unless-stopped"


def test_worker_can_be_scaled(services: dict[str, Any]) -> None:
    """`docker compose up --scale worker=3` fails on a fixed name or a fixed host port."""
    worker = services["worker"]
    assert "container_name" not in worker
    # A fixed hostname would also give every replica the same Celery node name.
    assert "hostname" not in worker
    for port in worker.get("ports") or []:
        # "9200" (container only, a random host port) scales; "9200:9200" or {published: ...}
        # binds one host port that a second replica cannot have.
        published = port.get("published") if isinstance(port, dict) else ":" in str(port)
        assert not published, f"worker publishes a fixed host port: {port}"


def test_flower_requires_basic_auth_from_the_environment(services: dict[str, Any]) -> None:
    flower = services["flower"]
    argv = command_of(flower)
    auth = [arg for arg in argv if arg.startswith("--basic-auth")]
    assert len(auth) == 1, argv
    assert re.fullmatch(r"--basic-auth=\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", auth[0]), auth[0]
    assert "--port=5555" in argv
    assert any(str(port).endswith("5555:5555") for port in flower.get("ports") or [])


def test_flower_option_spellings_exist_in_flower() -> None:
    from flower.options import options

    for argument in ("--basic-auth", "--port"):
        assert argument.lstrip("-").replace("-", "_") in options, argument


def test_watcher_and_worker_metrics_ports(services: dict[str, Any]) -> None:
    watcher = environment_of(services["watcher"])
    port = watcher["STAGESYNC_METRICS__WATCHER_PORT"]
    assert f"{port}:{port}" in [str(item) for item in services["watcher"].get("ports") or []]
    assert environment_of(services["worker"])["STAGESYNC_METRICS__WORKER_PORT_BASE"]


@pytest.mark.parametrize("name", STAGESYNC_SERVICES)
def test_compose_environment_and_example_config_load_together(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """What each container would load: the mounted example file plus its environment."""
    for key, value in environment_of(services[name]).items():
        monkeypatch.setenv(key, interpolate(value, REQUIRED_ENV))
    settings = load_settings(EXAMPLE_CONFIG)
    assert settings.secret_bytes() == REQUIRED_ENV["STAGESYNC_PII_SECRET"].encode()
    if name == "watcher":
        assert settings.metrics.watcher_port == 9108
    if name == "worker":
        assert settings.metrics.worker_port_base == 9200


def test_required_variables_fail_loudly(services: dict[str, Any]) -> None:
    secret = environment_of(services["watcher"])["STAGESYNC_PII_SECRET"]
    with pytest.raises(KeyError, match="STAGESYNC_PII_SECRET"):
        interpolate(secret, {})
    auth = next(arg for arg in command_of(services["flower"]) if "--basic-auth" in arg)
    with pytest.raises(KeyError, match="FLOWER_BASIC_AUTH"):
        interpolate(auth, {})
    assert interpolate(auth, REQUIRED_ENV) == "--basic-auth=admin:dummy"


def test_traffic_generator_is_an_opt_in_profile(services: dict[str, Any]) -> None:
    traffic = services["traffic"]
    assert "traffic" in traffic.get("profiles", [])
    argv = command_of(traffic)
    assert argv[0] == "python" and argv[1] == "/opt/stagesync/traffic.py"
    environment = environment_of(traffic)
    assert {"TRAFFIC_RATE", "TRAFFIC_SECONDS", "TRAFFIC_PROD_URI"} <= set(environment)
    assert urlsplit(environment["TRAFFIC_PROD_URI"]).hostname == "prod-mongo"
    assert traffic.get("restart", "no") == "no", "it stops by itself; do not restart it"
    for other in (*DATA_SERVICES, *STAGESYNC_SERVICES):
        assert not services[other].get("profiles"), f"{other} must start by default"
    assert TRAFFIC_SCRIPT.is_file()


def test_traffic_script_refuses_nonsense_and_clamps(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("stagesync_traffic", TRAFFIC_SCRIPT)
    assert spec and spec.loader
    traffic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(traffic)
    monkeypatch.setenv("TRAFFIC_RATE", "1e9")
    assert traffic.bounded("TRAFFIC_RATE", 20.0, *traffic.RATE_BOUNDS) == traffic.RATE_BOUNDS[1]
    monkeypatch.setenv("TRAFFIC_RATE", "nan")
    assert traffic.bounded("TRAFFIC_RATE", 20.0, 0.1, 10.0) == 0.1
    monkeypatch.setenv("TRAFFIC_RATE", "fast")
    with pytest.raises(SystemExit):
        traffic.bounded("TRAFFIC_RATE", 20.0, 0.1, 10.0)
    monkeypatch.delenv("TRAFFIC_RATE")
    assert traffic.bounded("TRAFFIC_RATE", 20.0, 0.1, 100.0) == 20.0


# ------------------------------------------------------------------------------------------------
# (b) `docker compose config`, where the compose plugin exists
# ------------------------------------------------------------------------------------------------


def _compose_available() -> tuple[bool, str]:
    docker = shutil.which("docker")
    if docker is None:
        return False, "no `docker` command on PATH"
    try:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True,
                               timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, f"`docker compose version` could not run: {error}"
    if probe.returncode != 0:
        reason = (probe.stderr or probe.stdout).strip().splitlines()[:1]
        return False, ("`docker compose version` failed (the Compose v2 plugin is not installed)"
                       + (f": {reason[0]}" if reason else ""))
    return True, ""


def _docker_compose(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    available, reason = _compose_available()
    if not available:
        pytest.skip(reason)
    return subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "--project-directory", str(REPO),
         *arguments],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False, env=env,
        cwd=REPO,
    )


def test_docker_compose_config_accepts_the_file() -> None:
    env = subprocess_env(**REQUIRED_ENV)
    for profile_arguments in ((), ("--profile", "traffic")):
        result = _docker_compose(*profile_arguments, "config", "--quiet", env=env)
        assert result.returncode == 0, result.stderr
    listed = _docker_compose("--profile", "traffic", "config", "--services", env=env)
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {*DATA_SERVICES, *STAGESYNC_SERVICES, "traffic"}


def test_docker_compose_config_requires_the_secrets() -> None:
    env = subprocess_env(FLOWER_BASIC_AUTH="admin:dummy")
    result = _docker_compose("config", "--quiet", env=env)
    assert result.returncode != 0
    assert "STAGESYNC_PII_SECRET" in result.stderr


# ------------------------------------------------------------------------------------------------
# (c) Procfile
# ------------------------------------------------------------------------------------------------


def test_procfile_processes_and_executables() -> None:
    processes = procfile()
    assert set(processes) == {"watcher", "worker", "flower", "beat"}
    assert shlex.split(processes["watcher"]) == ["stagesync", "watch"]
    for name, command in processes.items():
        executable = shlex.split(command)[0]
        path = VENV_BIN / executable
        assert path.is_file() and os.access(path, os.X_OK), (
            f"{name}: {executable} is not an executable in {VENV_BIN}")
    for name in ("worker", "flower", "beat"):
        assert shlex.split(processes[name])[:4] == ["celery", "-A", "stagesync.tasks", name]


def _expand(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Expand a Procfile command the way honcho and foreman run it: through /bin/sh."""
    return subprocess.run(["/bin/sh", "-c", f"set -- {command}; printf '%s\\n' \"$@\""],
                          capture_output=True, text=True, timeout=30, check=False, env=env)


def test_procfile_commands_expand_in_the_shell() -> None:
    processes = procfile()
    env = subprocess_env(FLOWER_BASIC_AUTH="admin:dummy", PORT="5100")
    flower = _expand(processes["flower"], env)
    assert flower.returncode == 0, flower.stderr
    assert "--basic-auth=admin:dummy" in flower.stdout.splitlines()
    assert "--port=5555" in flower.stdout.splitlines()
    env["FLOWER_PORT"] = "6555"
    assert "--port=6555" in _expand(processes["flower"], env).stdout.splitlines()
    # Without credentials Flower must not start at all (rather than start unprotected).
    unset = _expand(processes["flower"], subprocess_env())
    assert unset.returncode != 0
    assert "FLOWER_BASIC_AUTH" in unset.stderr
    # Several honcho/foreman workers get distinct Celery node names from their PORT.
    names = set()
    for port in ("5100", "5101"):
        argv = _expand(processes["worker"], subprocess_env(PORT=port)).stdout.splitlines()
        names.add(argv[argv.index("-n") + 1] if "-n" in argv else "celery@%h")
    assert len(names) == 2, names


@pytest.mark.parametrize("argv", [
    ["stagesync", "watch", "--help"],
    ["celery", "-A", "stagesync.tasks", "worker", "--help"],
    ["celery", "-A", "stagesync.tasks", "beat", "--help"],
    ["celery", "-A", "stagesync.tasks", "flower", "--help"],
], ids=["watch", "worker", "beat", "flower"])
def test_procfile_programs_start_with_a_valid_config(tmp_path: Path, argv: list[str]) -> None:
    config = tmp_path / "stagesync.yaml"
    config.write_text(MINIMAL_CONFIG, encoding="utf-8")
    result = subprocess.run([str(VENV_BIN / argv[0]), *argv[1:]], capture_output=True,
                            text=True, timeout=COMMAND_TIMEOUT, check=False, cwd=tmp_path,
                            env=subprocess_env(config))
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------
# (d) Dockerfile
# ------------------------------------------------------------------------------------------------


def test_dockerfile_installs_the_project_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [arguments for instruction, arguments in instructions if instruction == "RUN"]
    assert any(re.search(r"\bpip install (?:[^&;]* )?\.(?:\s|$)", run) for run in runs), runs
    users = [arguments for instruction, arguments in instructions if instruction == "USER"]
    assert users, "the image must switch to an unprivileged user"
    final_user = users[-1].split(":")[0]
    assert final_user not in ("root", "0"), users[-1]
    install_at = next(i for i, (name, args) in enumerate(instructions)
                      if name == "RUN" and "pip install" in args)
    user_at = max(i for i, (name, _) in enumerate(instructions) if name == "USER")
    assert user_at > install_at, "drop privileges after installing"
    assert "ENTRYPOINT" not in [instruction for instruction, _ in instructions], (
        "compose services give the command; no ENTRYPOINT")


def test_dockerfile_copies_everything_pip_install_needs() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    folders = project["tool"]["setuptools"]["package-dir"].values()
    copied: list[str] = []
    for instruction, arguments in dockerfile_instructions():
        if instruction == "COPY":
            parts = [part for part in shlex.split(arguments) if not part.startswith("--")]
            copied.extend(parts[:-1])
    assert "pyproject.toml" in copied
    for folder in folders:
        assert folder in copied, f"the Dockerfile does not COPY the package folder {folder!r}"
    assert "docker/traffic.py" in copied


# ------------------------------------------------------------------------------------------------
# (e) docker/stagesync.example.yaml
# ------------------------------------------------------------------------------------------------


def test_example_config_loads_with_the_secret_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    assert "pii_secret" not in raw, "the secret comes from STAGESYNC_PII_SECRET, not the file"
    monkeypatch.setenv("STAGESYNC_PII_SECRET", "example-secret")
    settings = load_settings(EXAMPLE_CONFIG)

    assert settings.prod.uri == "mongodb://prod-mongo:27017/?replicaSet=rs-prod"
    assert settings.staging.uri == "mongodb://staging-mongo:27017/?replicaSet=rs-staging"
    assert settings.redis_url == "redis://redis:6379/0"
    assert {c.name for c in settings.collections} == {"orders", "users"}
    for collection in settings.collections:
        assert collection.source.startswith("shop.")
        assert collection.staging_fields
        assert collection.rate_limit is not None and parse_rate_limit(collection.rate_limit)
        kinds = {rule.kind for rule in collection.pii.values()}
        assert kinds & {"fake", "redact", "drop"}, collection.name
    orders = settings.collection("orders")
    assert orders.partitions == 2
    assert queues_of(orders) == ["stagesync.orders.0", "stagesync.orders.1"]
    users = settings.collection("users")
    assert "email" in users.business_key and users.pii["email"].kind == "hash"
    all_kinds = {rule.kind for c in settings.collections for rule in c.pii.values()}
    assert {"hash", "fake", "redact", "drop"} <= all_kinds


def test_example_config_needs_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STAGESYNC_PII_SECRET", raising=False)
    with pytest.raises(ConfigError, match="STAGESYNC_PII_SECRET"):
        load_settings(EXAMPLE_CONFIG)


def test_example_config_points_at_the_compose_services(services: dict[str, Any]) -> None:
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    for section, service in (("prod", "prod-mongo"), ("staging", "staging-mongo")):
        uri = urlsplit(raw[section]["uri"])
        assert uri.hostname == service and service in services
        assert parse_qs(uri.query)["replicaSet"] == [REPLICA_SETS[service]]
    assert urlsplit(raw["redis_url"]).hostname == "redis"
