"""Installing this package changes no other vLLM run in the environment: vLLM's own
OpenAI server, started on the test model, runs vLLM's engine as vLLM made it; the
server's own engine runs the plugin's intake and shared-memory waits.

What each process runs is reported by a probe: a second vLLM general plugin (a
distribution on ``PYTHONPATH``, found as installed ones are), loaded beside the project's
in every process of either server, which writes down whose code vLLM's engine-core
intake and shared-memory wait are once the plugins are in.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from granite_speech_server.vllm_plugin import ENGINE_ENV
from loadtest.servers import our_command, running, vllm_command

PROBE = '''
import json, multiprocessing, os, sys, threading, time


def report():
    """Every half second, for this process: the files of vLLM's functions the project's
    plugin may replace (the plugins' order is not fixed: the last report counts)."""
    def watch():
        while True:
            found = {}
            core = sys.modules.get("vllm.v1.engine.core")
            shm = sys.modules.get("vllm.distributed.device_communicators.shm_broadcast")
            if core is not None:
                found["intake"] = core.EngineCoreProc._process_input_queue.__code__.co_filename
            if shm is not None:
                found["shm_wait"] = shm.SpinCondition.wait.__code__.co_filename
            path = os.path.join(os.environ["PLUGIN_PROBE_DIR"], f"{os.getpid()}.json")
            with open(path + ".tmp", "w") as out:
                json.dump({"process": multiprocessing.current_process().name,
                           "marked": os.environ.get("%s"),
                           **found}, out)
            os.replace(path + ".tmp", path)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
'''


def _install_probe(directory: Path) -> Path:
    """The probe as a distribution in ``directory`` (for ``PYTHONPATH``); returns where
    it reports."""
    (directory / "plugin_probe.py").write_text(PROBE % ENGINE_ENV)
    dist = directory / "plugin_probe-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[vllm.general_plugins]\nprobe = plugin_probe:report\n")
    reports = directory / "reports"
    reports.mkdir()
    return reports


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes_while_serving(command, ready_path: str, port: int, tmp_path: Path,
                             monkeypatch) -> list[dict]:
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    reports = _install_probe(probe_dir)
    monkeypatch.setenv("PYTHONPATH", str(probe_dir))
    monkeypatch.setenv("PLUGIN_PROBE_DIR", str(reports))
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    with running(command, ready_path, port, tmp_path / "server.log", tuned_engine=False):
        # Ready: every process has loaded its plugins; the probe reports once more.
        time.sleep(1.5)
        found = [json.loads(path.read_text()) for path in reports.glob("*.json")]
    assert [p for p in found if p["process"].startswith("EngineCore")], \
        f"the probe saw no engine core: {found}"
    return found


def test_vllms_own_server_runs_vllm_unchanged(model_dir, tmp_path, monkeypatch):
    port = _free_port()
    found = _processes_while_serving(vllm_command(str(model_dir), port, []), "/health", port,
                                     tmp_path, monkeypatch)
    for process in found:
        assert process["marked"] is None, process
        assert process.get("intake", "vllm/v1/engine/core.py").endswith(
            "vllm/v1/engine/core.py"), process
        assert process.get("shm_wait", "shm_broadcast.py").endswith("shm_broadcast.py"), process


def test_the_servers_own_engine_runs_the_plugins_intake_and_waits(model_dir, tmp_path,
                                                                  monkeypatch):
    port = _free_port()
    found = _processes_while_serving(our_command(str(model_dir), port, []), "/ready", port,
                                     tmp_path, monkeypatch)
    engine_core = next(p for p in found if p["process"].startswith("EngineCore"))
    assert engine_core["marked"] == "1", engine_core
    assert engine_core["intake"].endswith("vllm_plugin/intake.py"), engine_core
    assert engine_core["shm_wait"].endswith("vllm_plugin/shm_wait.py"), engine_core
