"""The command line: options, environment variables, and failing fast on a bad model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic_settings import CliApp

from granite_speech_server.config import DEFAULT_MODEL, Settings

OPTIONS = ["--model", "--served-model-name", "--host", "--port", "--max-model-len", "--dtype",
           "--gpu-memory-utilization", "--max-num-seqs", "--tensor-parallel-size",
           "--max-upload-mb", "--max-audio-seconds", "--api-key", "--api-key-file",
           "--auth-all-endpoints", "--max-concurrent-requests", "--max-inflight-audio-seconds",
           "--request-timeout-seconds", "--shutdown-delay-seconds", "--shutdown-grace-seconds",
           "--log-format", "--engine-spin-ms", "--engine-gather-ms"]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "granite_speech_server", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_the_package_installs_under_its_own_name_not_as_server(tmp_path: Path):
    """The project's server/ folder is the package granite_speech_server: a top-level
    "server" module would collide with any other of that name in an environment."""
    probe = ("import importlib.metadata as md, importlib.util as u, json\n"
             "import granite_speech_server\n"
             "eps = md.entry_points()\n"
             "print(json.dumps({'server': u.find_spec('server') is not None,\n"
             "  'location': granite_speech_server.__path__[0],\n"
             "  'scripts': [e.value for e in eps.select(group='console_scripts',\n"
             "              name='granite-speech-server')],\n"
             "  'plugins': [e.value for e in eps.select(group='vllm.general_plugins')\n"
             "              if e.name == 'granite_speech_server']}))")
    # Outside the checkout, where a server/ folder in the working directory can't help.
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=True)
    found = json.loads(result.stdout)
    assert found["server"] is False
    assert Path(found["location"]) == Path(__file__).parents[1] / "server"
    assert found["scripts"] == ["granite_speech_server.__main__:main"]
    assert found["plugins"] == ["granite_speech_server.vllm_plugin:register"]


def test_help_documents_every_option():
    result = run_cli("--help")
    assert result.returncode == 0
    for option in OPTIONS:
        assert option in result.stdout
    assert "GRANITE_SPEECH_" in result.stdout


def test_flags_and_defaults():
    settings = CliApp.run(Settings, cli_args=[
        "--served-model-name", "a", "--served-model-name", "b", "--max-model-len", "4096",
        "--dtype", "bfloat16", "--tensor-parallel-size", "2", "--port", "9000"])
    assert settings.model == DEFAULT_MODEL
    assert settings.model_names == ["a", "b"]
    assert (settings.max_model_len, settings.dtype, settings.tensor_parallel_size,
            settings.port) == (4096, "bfloat16", 2, 9000)


def test_default_served_names_are_the_id_and_its_last_component():
    assert Settings().model_names == [DEFAULT_MODEL, "granite-4.0-1b-speech"]


def test_every_option_reads_from_the_environment(monkeypatch):
    monkeypatch.setenv("GRANITE_SPEECH_MAX_MODEL_LEN", "1024")
    monkeypatch.setenv("GRANITE_SPEECH_SERVED_MODEL_NAME", "x, y")
    monkeypatch.setenv("GRANITE_SPEECH_GPU_MEMORY_UTILIZATION", "0.5")
    settings = CliApp.run(Settings, cli_args=[])
    assert (settings.max_model_len, settings.model_names,
            settings.gpu_memory_utilization) == (1024, ["x", "y"], 0.5)


def test_invalid_option_values_are_refused():
    result = run_cli("--max-model-len", "10")
    assert result.returncode != 0
    assert "max_model_len" in result.stderr or "max-model-len" in result.stderr


def test_a_model_that_is_not_granite_speech_fails_fast(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    result = run_cli("--model", str(tmp_path), timeout=60)
    assert result.returncode == 1
    assert "not a Granite speech model" in result.stderr
    assert result.stderr.strip().count("\n") == 0, "one clear line"


@pytest.mark.parametrize("model", ["/definitely/not/here"])
def test_a_missing_model_says_how_to_point_at_a_local_directory(model):
    result = run_cli("--model", model, timeout=90)
    assert result.returncode == 1
    assert "local checkpoint directory" in result.stderr
    # ... and how to mount and name one in a container (the image has no model).
    assert "-e GRANITE_SPEECH_MODEL=" in result.stderr and ":ro" in result.stderr
    assert result.stderr.strip().count("\n") == 0, "one clear line"


def test_an_unreadable_api_key_file_fails_fast(model_dir: Path, tmp_path: Path):
    result = run_cli("--model", str(model_dir), "--api-key-file", str(tmp_path / "missing"),
                     timeout=90)
    assert result.returncode == 1
    assert "API key file" in result.stderr
    assert result.stderr.strip().count("\n") == 0, "one clear line"


def test_bad_limits_are_refused_without_echoing_keys():
    result = run_cli("--api-key", "sk-secret-123", "--max-audio-seconds", "600",
                     "--max-inflight-audio-seconds", "60")
    assert result.returncode != 0
    assert "max_inflight_audio_seconds" in result.stderr
    assert "sk-secret-123" not in result.stderr


def test_vllm_caches_no_processed_audio_unless_asked():
    """vLLM keeps 4 GiB of processed inputs per process by default; uploads rarely repeat,
    so the cache would only grow the server's memory (seen in a soak: +23% in 4 minutes)."""
    from granite_speech_server.asr.vllm_engine import engine_args

    assert engine_args(Settings(model="m")).mm_processor_cache_gb == 0
    assert engine_args(Settings(model="m", mm_processor_cache_gib=1)).mm_processor_cache_gb == 1


def test_the_engine_spin_and_gather_reach_the_engine_processes(monkeypatch):
    """``--engine-spin-ms`` and ``--engine-gather-ms`` go to vLLM's processes through the
    environment, where the plugin reads them (``shm_wait``, ``intake``); unset, the
    plugin picks the host's defaults."""
    from granite_speech_server.asr.vllm_engine import _configure_engine_environment
    from granite_speech_server.vllm_plugin import (
        ENGINE_ENV,
        intake,
        shm_wait,
        started_by_this_server,
    )

    for name in (shm_wait.SPIN_MS_ENV, intake.GATHER_MS_ENV, ENGINE_ENV, "VLLM_CONFIGURE_LOGGING"):
        # Set, then deleted: monkeypatch then removes what the engine start writes.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    _configure_engine_environment(Settings(model="m"))
    assert started_by_this_server()
    assert "VLLM_CONFIGURE_LOGGING" not in os.environ  # text logs: vLLM prints its own
    assert shm_wait.spin_ms_for_this_host() == shm_wait.CPU_SPIN_MS  # this host has no GPU
    assert intake.configured_gather_ms() == intake.DEFAULT_GATHER_MS
    _configure_engine_environment(Settings(model="m", engine_spin_ms=1000, engine_gather_ms=0))
    assert shm_wait.spin_ms_for_this_host() == 1000
    assert intake.configured_gather_ms() == 0
    _configure_engine_environment(Settings(model="m", log_format="json"))
    assert os.environ["VLLM_CONFIGURE_LOGGING"] == "0"  # vLLM's records reach our handler


@pytest.mark.parametrize(
    ("machine", "gpu", "avx512_bf16", "amx", "engine_dtype"),
    [("x86_64", False, False, False, "float32"),    # bfloat16 would be emulated
     ("x86_64", False, True, False, "auto"),
     ("x86_64", False, False, True, "auto"),
     ("x86_64", True, False, False, "auto"),        # the GPU runs the model
     ("aarch64", False, False, False, "auto")])      # torch's x86 checks say nothing here
def test_auto_dtype_is_float32_on_a_cpu_without_bfloat16(monkeypatch, machine, gpu,
                                                          avx512_bf16, amx, engine_dtype):
    import platform

    import torch

    from granite_speech_server.asr.vllm_engine import engine_args

    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert engine_args(Settings(model="m")).dtype == engine_dtype
    assert engine_args(Settings(model="m", dtype="bfloat16")).dtype == "bfloat16"


def test_vllms_endpoint_in_the_benchmarks_runs_the_dtype_ours_picks():
    from loadtest.servers import vllm_command
    from granite_speech_server.asr.vllm_engine import engine_dtype

    command = vllm_command("m", 8001, [])
    assert command[command.index("--dtype") + 1] == engine_dtype("auto")


def test_vllm_profiles_with_the_longest_segment_the_server_sends():
    from granite_speech_server.asr.vllm_engine import engine_args

    def profiled(**settings) -> dict:
        return engine_args(Settings(model="m", **settings)).limit_mm_per_prompt["audio"]

    assert profiled() == {"count": 1, "length": 30 * 16000}
    assert profiled(max_segment_seconds=12.5) == {"count": 1, "length": 200000}
    # A context too small for a whole segment: what it holds beside the prompt and output.
    short = profiled(max_model_len=256)["length"]
    assert 15 * 16000 < short < 21 * 16000


def _misfit_copy(model_dir: Path, tmp_path: Path, **changes) -> Path:
    """The test model with its config changed (``encoder_config__x`` for nested fields)."""
    out = tmp_path / "misfit"
    out.mkdir()
    for item in model_dir.iterdir():
        (out / item.name).symlink_to(item)
    (out / "config.json").unlink()
    config = json.loads((model_dir / "config.json").read_text())
    for key, value in changes.items():
        *parents, leaf = key.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("changes, named", [
    ({"encoder_config__input_dim": 80}, "input_dim is 80"),
    ({"encoder_config__hidden_dim": 256, "encoder_config__dim_head": 64,
      "projector_config__encoder_hidden_size": 256}, "encoder.input_linear.weight is 128x160"),
    ({"encoder_config__num_layers": 5}, "lack encoder.layers.4.attn.to_q.weight"),
    ({"encoder_config__num_layers": 3}, "more encoder layers than config.json's 3"),
    ({"tie_word_embeddings": False, "text_config__tie_word_embeddings": False},
     "lack language_model.lm_head.weight"),
    ({"projector_config__encoder_hidden_size": 64}, "encoder_hidden_size 64"),
])
def test_a_checkpoint_that_does_not_fit_the_plugin_fails_fast_in_one_line(
        model_dir: Path, tmp_path: Path, changes: dict, named: str):
    result = run_cli("--model", str(_misfit_copy(model_dir, tmp_path, **changes)))
    assert result.returncode != 0
    assert "doesn't fit this server" in result.stderr and named in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0, "one clear line"
