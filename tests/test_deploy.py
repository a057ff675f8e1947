"""deploy/: the Dockerfile, the compose file and the Kubernetes Job run the README's main command, with the
packaged prompt sets inside the image (no `docker build` needed)."""

import json
import posixpath
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- {marker} -->\s*```\w*\n(.*?)```\s*<!-- /{marker} -->", text, re.S)
    assert found, f"README.md has no ```...``` block between <!-- {marker} --> and <!-- /{marker} -->"
    return found.group(1).strip()


def main_command() -> list[str]:
    """The README's main command, without the install step before it (`pip install ... && python run.py`)."""
    return shlex.split(readme_block("main-command").split("&&")[-1])


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def instruction(name: str) -> list[str]:
    return [args for op, args in dockerfile() if op == name]


def test_main_command_is_run_py():
    assert main_command()[-1] == "run.py" and main_command()[0].startswith("python")


def test_dockerfile_runs_the_main_command_on_a_cuda_image():
    assert instruction("FROM")[0].startswith("nvidia/cuda:")
    assert json.loads(instruction("ENTRYPOINT")[-1]) == main_command()  # exec form: arguments go to run.py
    installs = [run for run in instruction("RUN") if re.search(r"pip install -e \"?\.\[", run)]
    assert installs, "the Dockerfile must install the package itself, editable, as the README does"
    extras = set(re.search(r"\.\[([^\]]*)\]", installs[0]).group(1).split(","))
    assert "gpu" in extras and "launchers" in extras
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text()
    assert "/app" in instruction("COPY")[-1] and not re.search(r"^(flashspec|\*\*)?/?data", ignored, re.M)


def test_compose_runs_the_main_command_as_a_sweep():
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert services, "compose.yaml defines no service"
    workdir = instruction("WORKDIR")[-1]
    for name, service in services.items():
        assert service["entrypoint"] == main_command(), name
        assert "-m" in service["command"], f"{name}: a sweep is a multirun (-m)"
        mounts = [v["target"] for v in service["volumes"]]
        assert posixpath.join(workdir, "outputs") in mounts
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"


def test_kubernetes_job_runs_the_main_command_and_writes_to_a_volume():
    docs = list(yaml.safe_load_all((DEPLOY / "k8s-job.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == main_command()
    args = container["args"]
    assert "-m" in args
    sweep_dir = next(a.split("=", 1)[1] for a in args if a.startswith("hydra.sweep.dir="))
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    results = next(name for name, path in mounts.items() if sweep_dir.startswith(path + "/"))
    claim = volumes[results]["persistentVolumeClaim"]["claimName"]
    assert any(d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim for d in docs)
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1


@pytest.mark.parametrize("path", ["Dockerfile", "compose.yaml", "k8s-job.yaml"])
def test_deploy_files_name_only_existing_configs(path):
    """Every `group=option` a deploy file passes to run.py names a file in conf/."""
    text = (DEPLOY / path).read_text()
    for group, option in re.findall(r"\b(experiment|hardware|hydra/launcher|target)=(\w+)", text):
        assert (ROOT / "conf" / group / f"{option}.yaml").is_file(), f"{path}: {group}={option}"
