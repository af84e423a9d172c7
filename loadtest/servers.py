"""Start and stop the two servers compared here, on the same model and machine.

Ours: ``python -m granite_speech_server``. vLLM's own: ``python -m vllm.entrypoints.openai.api_server``
in the same environment, with this project's plugin selected through
``--hf-overrides``, the dtype ours picks and the plugin's engine tuning invited
(``ENGINE_ENV``, which the server sets for its own engine), so engine and audio
processor are identical and only the serving layer differs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from granite_speech_server.asr.vllm_engine import engine_dtype
from granite_speech_server.vllm_plugin import ARCHITECTURE, ENGINE_ENV


def our_command(model: str, port: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "granite_speech_server", "--model", model, "--port", str(port),
            "--host", "127.0.0.1", *extra]


def vllm_command(model: str, port: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--port", str(port), "--host", "127.0.0.1", "--max-model-len", "2048",
            "--limit-mm-per-prompt", json.dumps({"audio": 1}),
            "--hf-overrides", json.dumps({"architectures": [ARCHITECTURE]}),
            "--dtype", engine_dtype("auto"), *extra]


@dataclass(frozen=True)
class RunningServer:
    url: str
    pid: int


@contextlib.contextmanager
def running(command: list[str], ready_path: str, port: int, log: Path,
            timeout_s: float = 900, tuned_engine: bool = True) -> Iterator[RunningServer]:
    """Run a server until the block ends; yield it once ``ready_path`` answers 200.
    ``tuned_engine``: vLLM's own server, too, runs the plugin's engine-core intake and
    shared-memory waits (ours always does)."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
           **({ENGINE_ENV: "1"} if tuned_engine else {}),
           # vLLM's own endpoint refuses audio over 600 s and uploads over 25 MB by
           # default; ours allows 2 h and 100 MB. Same limits for both.
           "VLLM_MAX_AUDIO_DECODE_DURATION_S": "7200", "VLLM_MAX_AUDIO_CLIP_FILESIZE_MB": "100"}
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{command[2]} exited with {proc.returncode}; see {log}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    break
            time.sleep(1)
        else:
            raise TimeoutError(f"{command[2]} not ready after {timeout_s} s; see {log}")
        yield RunningServer(url, proc.pid)
    finally:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        # vLLM's engine core and worker, signalled together with the server, were seen
        # outliving it (minutes, 3.5 GB at full size): nothing of the run may stay.
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    # A server that failed to start may have taken its whole group with it: the
    # error to report is then why it exited, not that there was nothing to stop.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


def server_processes(pid: int) -> dict[str, "psutil.Process"]:
    """A server's processes by role: ``api`` (the one started), and vLLM's
    ``engine_core`` and ``worker`` (named ``VLLM::EngineCore`` and ``VLLM::Worker...``)."""
    import psutil

    api = psutil.Process(pid)
    roles = {"api": api}
    for child in api.children(recursive=True):
        name = child.name()
        if name.startswith("VLLM::EngineCore"):
            roles["engine_core"] = child
        elif name.startswith("VLLM::") and "Worker" in name:
            roles["worker"] = child
    return roles


def peak_rss_gib(pid: int) -> float:
    """The kernel's high-water mark of a process's resident memory (VmHWM), in GiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines()
               if line.startswith("VmHWM:"))
    return kib / 1024**2
