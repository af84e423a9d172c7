"""The benchmarks check what they need before they start anything, and the bench extra
installs what they import."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from loadtest.requirements import INSTALL_TARGET, missing, require
from tests.conftest import ROOT

ENGINE_STACK = {"torch", "transformers"}
"""Imported by loadtest to drive vLLM's own modules; vLLM pins them, the project doesn't."""


def run_blocking(module: str, blocked: list[str], *args: str,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m module args`` in a process where importing ``blocked`` fails, as it
    does where the package isn't installed."""
    wrapper = ("import runpy, sys\n"
               f"for name in {blocked!r}: sys.modules[name] = None\n"
               f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n")
    # The timeout only ends a hang: the check comes before any corpus or server.
    return subprocess.run([sys.executable, "-c", wrapper, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_bench_without_matplotlib_stops_before_its_comparison(tmp_path):
    out = tmp_path / "bench"
    ran = run_blocking("loadtest.bench", ["matplotlib"], "--compare-vllm", "--out", str(out))
    assert ran.returncode == 2, ran.stderr[-3000:]
    assert "matplotlib" in ran.stderr and INSTALL_TARGET in ran.stderr
    assert "making the corpus" not in ran.stdout
    assert not out.exists()  # where the servers' logs and the results would have gone


@pytest.mark.parametrize("entry_point", [
    ["loadtest.bench", "--url", "http://127.0.0.1:9"],
    ["loadtest.cpu"],
    ["loadtest.soak"],
    ["loadtest.long_audio"],
    ["loadtest.frontend"],
    ["loadtest.ctc"],
    ["loadtest.startup", "--request", "10"],
    ["loadtest.timeout"],
], ids=lambda argv: argv[0])
def test_each_entry_point_names_the_missing_commands_first(tmp_path, entry_point):
    """No espeak-ng, flite or ffmpeg on the PATH (a server-only install has none)."""
    module, *args = entry_point
    ran = run_blocking(module, [], *args, "--out", str(tmp_path / "out"),
                       env={**os.environ, "PATH": str(tmp_path)})
    assert ran.returncode == 2, ran.stderr[-3000:]
    assert f"{module} needs espeak-ng, flite" in ran.stderr and INSTALL_TARGET in ran.stderr
    assert not (tmp_path / "out").exists()


def test_the_locust_workload_names_the_missing_commands_before_it_runs(tmp_path):
    ran = run_blocking("locust", [], "-f", str(ROOT / "loadtest" / "locustfile.py"),
                       "--headless", "-u", "1", "-t", "1s", "--host", "http://127.0.0.1:9",
                       env={**os.environ, "PATH": str(tmp_path)})
    assert ran.returncode == 2, ran.stderr[-3000:]
    assert "locustfile.py needs espeak-ng, flite, ffmpeg" in ran.stderr
    assert INSTALL_TARGET in ran.stderr


def test_require_names_every_missing_thing_at_once(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert missing(["numpy", "matplotlib"], ["ffmpeg"]) == ["matplotlib", "ffmpeg"]
    with pytest.raises(SystemExit) as stopped:
        require("loadtest.x", ["numpy", "matplotlib"], ["ffmpeg"])
    assert stopped.value.code == 2
    assert "loadtest.x needs matplotlib, ffmpeg" in capsys.readouterr().err
    require("loadtest.x", ["numpy"])  # nothing missing: it returns


def _imported_top_level(paths) -> set[str]:
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_the_bench_extra_installs_every_package_loadtest_imports():
    """With the server's own requirements (its engine extra included): a module found
    only through another package's requirements may leave with that package."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = {canonicalize_name(Requirement(line).name)
                for line in [*project["dependencies"], *extras["cpu"], *extras["gpu"],
                             *extras["bench"]]}
    third_party = (_imported_top_level((ROOT / "loadtest").glob("*.py"))
                   - set(sys.stdlib_module_names) - ENGINE_STACK
                   # The repository's own packages (loadtest.capacity serves on the
                   # HTTP-layer tests' scripted engine, tests/api/fake_engine.py).
                   - {"loadtest", "tools", "tests", "granite_speech_server"})
    providers = packages_distributions()
    undeclared = {name for name in third_party
                  if not {canonicalize_name(d) for d in providers.get(name, [])} & declared}
    assert {"httpx", "locust", "matplotlib", "psutil"} <= third_party
    assert not undeclared, f"imported by loadtest/, in no requirement: {undeclared}"
