"""The project's vLLM plugin is installed, registers its model class, and keeps the
CPU environment free of the CUDA-only audio/vision packages."""

from __future__ import annotations

import importlib.util
from importlib.metadata import entry_points

import pytest

from granite_speech_server.vllm_plugin import ARCHITECTURE, register
from loadtest.engine_waits import StandInCore, vllm_take


def test_plugin_entry_point_is_installed():
    names = {ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert "granite_speech_server.vllm_plugin:register" in names


def test_register_adds_the_architecture_once():
    from vllm import ModelRegistry

    register()
    register()
    assert ARCHITECTURE in ModelRegistry.get_supported_archs()


def test_model_class_is_vllms_granite_network_with_our_processor():
    from vllm.model_executor.models.granite_speech import GraniteSpeechForConditionalGeneration

    from granite_speech_server.vllm_plugin import granite

    model_class = granite.GraniteSpeechServerForConditionalGeneration
    assert model_class.__name__ == ARCHITECTURE
    assert issubclass(model_class, GraniteSpeechForConditionalGeneration)
    factories = model_class.__dict__["_processor_factory"]
    assert factories.processor is granite.GraniteSpeechServerMultiModalProcessor


@pytest.mark.parametrize("package", ["torchaudio", "torchvision", "torchcodec"])
def test_cuda_only_packages_are_absent(package):
    import torch

    if torch.cuda.is_available():
        pytest.skip("GPU environments use the official vLLM and its own torch stack")
    assert importlib.util.find_spec(package) is None



def _vllm_encoder_and_projector():
    """(config, encoder, projector): vLLM's modules with the tiny model's shapes, random
    weights, float32. Call in a process of its own: their parallel layers need vLLM's
    distributed state set up."""
    import torch
    from transformers import AutoConfig
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.model_executor.models.granite_speech import (
        GraniteSpeechCTCEncoder,
        GraniteSpeechEncoderProjector,
    )

    from tests.conftest import TRAINED_MODEL

    config = AutoConfig.from_pretrained(TRAINED_MODEL)
    with set_current_vllm_config(VllmConfig()):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method="tcp://127.0.0.1:0")
        initialize_model_parallel(1, 1)
        torch.manual_seed(0)
        encoder = GraniteSpeechCTCEncoder(config.encoder_config, prefix="encoder").eval()
        projector = GraniteSpeechEncoderProjector(config, None, prefix="projector").eval()
    for parameter in [*encoder.parameters(), *projector.parameters()]:  # vLLM's are empty
        torch.nn.init.normal_(parameter, std=0.1)
    for module in [*encoder.modules(), *projector.modules()]:  # as loading weights does
        if getattr(module, "quant_method", None) is not None:
            module.quant_method.process_weights_after_loading(module)
    return config, encoder, projector


ENCODED_LENGTHS = [1, 37, 137, 150, 200, 263, 610, 900]
"""Encoder frames (50/s): under and over one attention block (200), several blocks;
more than one pack's worth (``PACK_FRAMES``) in all, so encoded in two packs."""


def _encode_in_fresh_process(lengths: list[int]) -> dict[str, list[float]]:
    """vLLM's encoder and projector (tiny model's shapes, random weights, float32), in a
    process of their own: their parallel layers need vLLM's distributed state set up."""
    import torch

    from granite_speech_server.vllm_plugin.encoder import encode_audios

    config, encoder, projector = _vllm_encoder_and_projector()
    tokens_per_window = config.window_size // config.downsample_rate
    diffs: dict[str, list[float]] = {"alone": [], "padded_beside_longest": []}
    with torch.inference_mode():
        features = [torch.randn(n, config.encoder_config.input_dim) for n in lengths]
        longest = max(lengths)
        stacked = torch.stack([torch.nn.functional.pad(f, (0, 0, 0, longest - len(f)))
                               for f in features])
        batched = projector(encoder(stacked))  # vLLM's own way: one padded batch
        sizes = [-(-n // config.window_size) * tokens_per_window for n in lengths]
        ours = encode_audios(encoder, projector, features, sizes)
        for row, (feature, size) in enumerate(zip(features, sizes, strict=True)):
            alone = projector(encoder(feature[None]))[0, :size]
            scale = alone.abs().max().item()
            diffs["alone"].append((ours[row] - alone).abs().max().item() / scale)
            diffs["padded_beside_longest"].append(
                (batched[row, :size] - alone).abs().max().item() / scale)
    return diffs


def test_audios_are_packed_in_order_up_to_the_pack_size():
    from granite_speech_server.vllm_plugin.encoder import PACK_FRAMES, _packs

    lengths = [1000, 400, 200, PACK_FRAMES + 500, 10]
    assert _packs(lengths) == [slice(0, 2), slice(2, 3), slice(3, 4), slice(4, 5)]
    assert _packs([10] * 3) == [slice(0, 3)]
    assert _packs([]) == []


def test_each_audio_is_encoded_as_if_it_were_alone_and_unpadded():
    """Batched with its padding masked, each audio gets the embeddings vLLM's encoder
    gives it alone; in vLLM's own padded batch the shorter ones do not."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        diffs = pool.apply(_encode_in_fresh_process, (ENCODED_LENGTHS,))
    assert max(diffs["alone"]) < 1e-4, diffs
    assert min(diffs["padded_beside_longest"][:-1]) > 1e-3, diffs


def _next_message_after_a_pause(spin_ms: float, notified: bool) -> dict:
    """A reader of one of vLLM's shared-memory queues, with the plugin's wait installed,
    waits for a message written a while after the one it last read. In a process of its
    own: ``shm_wait.install`` changes vLLM's queues process-wide. (What the wait costs in
    CPU and latency: ``python -m loadtest.engine_waits``.)"""
    import threading
    import time

    from vllm.distributed.device_communicators.shm_broadcast import MessageQueue

    from granite_speech_server.vllm_plugin import shm_wait

    shm_wait.install(spin_ms)
    writer = MessageQueue(n_reader=1, n_local_reader=1)
    seen: dict = {}

    def read() -> None:
        reader = MessageQueue.create_from_handle(writer.export_handle(), 0)
        reader.wait_until_ready()
        reader.dequeue()
        seen["read"] = reader.dequeue()
        seen["spin_s"] = reader._spin_condition.busy_loop_s

    thread = threading.Thread(target=read)
    thread.start()
    writer.wait_until_ready()
    writer.enqueue("step 1")
    time.sleep(0.2)
    if not notified:  # vLLM's notifications can be lost; simulate one
        writer._spin_condition.notify = lambda: None
    writer.enqueue("step 2")
    thread.join()
    return seen


@pytest.mark.parametrize("notified", [True, False], ids=["notified", "notification_lost"])
def test_engine_processes_spin_only_briefly_and_still_get_every_message(notified):
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        seen = pool.apply(_next_message_after_a_pause, (2.0, notified))
    assert seen == {"read": "step 2", "spin_s": 0.002}


def _send_later(core: StandInCore, requests: list[str], apart_s: float) -> None:
    import threading
    import time

    def send() -> None:
        for request in requests:
            core.input_queue.put(("add", request))
            time.sleep(apart_s)

    threading.Thread(target=send, daemon=True).start()


class _Trickle:
    """An input queue that always has one more request, arriving just as each wait for
    it ends on ``clock``: a trickle that never stops."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.timed_waits: list[float] = []

    def get(self, block: bool = True, timeout: float | None = None):
        if timeout is not None:
            self.timed_waits.append(timeout)
            self.clock[0] += timeout
            assert len(self.timed_waits) < 100, "the trickle holds the core for good"
        return ("add", f"r{len(self.timed_waits)}")

    def empty(self) -> bool:
        return True

    def get_nowait(self):
        raise AssertionError("empty")


def test_an_idle_engine_core_takes_a_burst_whole():
    """Segments sent together arrive one message at a time: the core woken by the first
    waits for the rest (200 ms here) before its step, instead of encoding it alone."""
    from granite_speech_server.vllm_plugin.intake import gathering

    # Requests 20 ms apart: well inside the wait, far outside a thread switch.
    core = StandInCore()
    _send_later(core, ["a", "b", "c"], apart_s=0.02)
    gathering(vllm_take, 0.2)(core)
    assert core.taken == ["a", "b", "c"]

    alone = StandInCore()
    _send_later(alone, ["a", "b", "c"], apart_s=0.1)
    vllm_take(alone)
    assert alone.taken == ["a"], "without it, the core steps on the first request alone"


def test_a_busy_engine_core_takes_what_is_queued_without_waiting():
    from granite_speech_server.vllm_plugin.intake import gathering

    trickle = _Trickle([0.0])
    busy = StandInCore(busy=True, input_queue=trickle)
    gathering(vllm_take, 1.0)(busy)
    assert trickle.timed_waits == []

    queued = StandInCore(busy=True)
    queued.input_queue.put(("add", "queued"))
    gathering(vllm_take, 1.0)(queued)
    assert queued.taken == ["queued"]


def test_a_trickle_holds_an_idle_core_back_only_so_many_gathers():
    """Requests that never stop coming: the core steps after ``MAX_GATHER_ROUNDS``
    gathers' worth of them (on a clock that only the waits move)."""
    from granite_speech_server.vllm_plugin.intake import MAX_GATHER_ROUNDS, take_burst

    clock = [0.0]
    trickle = _Trickle(clock)
    core = StandInCore(input_queue=trickle)
    vllm_take(core)
    take_burst(core, 0.25, clock=lambda: clock[0])
    assert trickle.timed_waits == [0.25] * MAX_GATHER_ROUNDS
    assert len(core.taken) == 1 + MAX_GATHER_ROUNDS


def test_intake_is_installed_on_vllms_engine_core_once():
    from vllm.v1.engine.core import EngineCoreProc

    from granite_speech_server.vllm_plugin import intake

    vllm_take = getattr(EngineCoreProc._process_input_queue, "__wrapped__",
                        EngineCoreProc._process_input_queue)
    try:
        intake.install(1.0)
        intake.install(1.0)
        assert EngineCoreProc._process_input_queue.__wrapped__ is vllm_take
        intake.install(0)
        assert EngineCoreProc._process_input_queue is vllm_take
    finally:
        EngineCoreProc._process_input_queue = vllm_take


PATCHED_FUNCTIONS = """
from vllm.distributed.device_communicators.shm_broadcast import SpinCondition
from vllm.plugins import load_general_plugins
from vllm.v1.engine.core import EngineCoreProc

load_general_plugins()
# functools.wraps gives a patch vLLM's names: where its code is says whose it is.
print("intake", EngineCoreProc._process_input_queue.__code__.co_filename)
print("shm_wait", SpinCondition.wait.__code__.co_filename)
"""


def _vllm_functions_after_loading_plugins(**environment: str) -> dict[str, str]:
    """{function: the file its code is in} for what the plugin may change, in a fresh
    process that loads vLLM's general plugins as each of vLLM's processes does."""
    import os
    import subprocess
    import sys

    from granite_speech_server.vllm_plugin import ENGINE_ENV, intake, shm_wait

    plugins_own = {ENGINE_ENV, intake.GATHER_MS_ENV, shm_wait.SPIN_MS_ENV}
    env = {name: value for name, value in os.environ.items() if name not in plugins_own}
    done = subprocess.run([sys.executable, "-c", PATCHED_FUNCTIONS], env={**env, **environment},
                          capture_output=True, text=True, check=True, timeout=300)
    return dict(line.split(" ", 1) for line in done.stdout.splitlines())


def test_the_plugin_changes_vllm_only_in_the_servers_engines():
    """Installed, the plugin is loaded by every vLLM run of the environment: only where
    the server marked the environment as its engine's does it touch vLLM's internals."""
    from granite_speech_server.vllm_plugin import ENGINE_ENV

    elsewhere = _vllm_functions_after_loading_plugins()
    assert elsewhere["intake"].endswith("vllm/v1/engine/core.py"), elsewhere
    assert elsewhere["shm_wait"].endswith("device_communicators/shm_broadcast.py"), elsewhere
    ours = _vllm_functions_after_loading_plugins(**{ENGINE_ENV: "1"})
    assert ours["intake"].endswith("vllm_plugin/intake.py"), ours
    assert ours["shm_wait"].endswith("vllm_plugin/shm_wait.py"), ours


def _encode_with_autograd_on() -> dict[str, bool]:
    """vLLM's encoder and projector (tiny shapes; their parameters want gradients) run
    through the plugin's ``encode_audios`` with autograd enabled, as vLLM's CPU worker
    runs its start-up profile."""
    import torch

    from granite_speech_server.vllm_plugin.encoder import encode_audios

    _, encoder, projector = _vllm_encoder_and_projector()
    wants_grad = any(p.requires_grad for p in encoder.parameters())
    with torch.enable_grad():
        embeds = encode_audios(encoder, projector, [torch.randn(300, 160), torch.randn(40, 160)],
                               [30, 9])
    return {"parameters_want_grad": wants_grad,
            "recorded": any(e.requires_grad or e.grad_fn is not None for e in embeds)}


def test_the_plugins_encoder_records_nothing_for_autograd_whatever_the_callers_mode():
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        found = pool.apply(_encode_with_autograd_on)
    assert found == {"parameters_want_grad": True, "recorded": False}


def test_the_ctc_head_records_nothing_for_autograd_whatever_the_callers_mode():
    import numpy as np
    import torch

    from granite_speech_server.asr.ctc import CtcHead
    from tests.conftest import TRAINED_MODEL

    head = CtcHead.load(str(TRAINED_MODEL))
    head.encoder.requires_grad_(True)
    outputs = []
    head.encoder.out.register_forward_hook(lambda module, args, out: outputs.append(out))
    with torch.enable_grad():
        head.log_posteriors([np.zeros(16000, np.float32), np.ones(8000, np.float32) * 0.1])
    assert len(outputs) == 4  # two clips' lengths apart; the mid layer's and the last's
    assert not any(out.requires_grad or out.grad_fn is not None for out in outputs)


def test_the_ctc_head_runs_in_the_dtype_and_on_the_device_it_is_given():
    import torch

    from granite_speech_server.asr.ctc import CtcHead
    from tests.conftest import TRAINED_MODEL

    head = CtcHead.load(str(TRAINED_MODEL), dtype=torch.bfloat16, device="cpu")
    floats = {p.dtype for p in head.encoder.parameters()}
    assert floats == {torch.bfloat16}
    assert head.encoder.attention_dists.dtype == torch.int64  # an index stays an index
    assert head.device == torch.device("cpu")
    assert CtcHead.load(str(TRAINED_MODEL), "float32").encoder.out.weight.dtype == torch.float32


def _model_config(**overrides):
    from vllm.config import ModelConfig

    from tests.conftest import TRAINED_MODEL

    register()
    return ModelConfig(model=str(TRAINED_MODEL), hf_overrides={"architectures": [ARCHITECTURE]},
                       **{"max_model_len": 2048, **overrides})


@pytest.mark.parametrize("limit, max_model_len, tokens", [
    ({"audio": 1}, 2048, 2046),  # as long as the context holds (vLLM's own: 500 s)
    ({"audio": 1}, 512, 510),
    ({"audio": {"count": 1, "length": 480000}}, 2048, 300),  # the server's 30 s segments
    ({"audio": {"count": 1, "length": 480000}}, 256, 255),
])
def test_vllm_profiles_with_the_longest_audio_a_prompt_carries(limit, max_model_len, tokens):
    """The dummy audio of vLLM's start-up profile, and the encoder budget it sizes, are the
    longest audio a prompt can carry: what fits the context, or what the caller says."""
    from vllm.multimodal import MULTIMODAL_REGISTRY

    processor = MULTIMODAL_REGISTRY.create_processor(
        _model_config(max_model_len=max_model_len, limit_mm_per_prompt=limit))
    dummy = processor.get_dummy_mm_inputs({"audio": 1})
    placeholders = dummy["mm_placeholders"]["audio"]
    assert [p.get_num_embeds() for p in placeholders] == [tokens]
    assert processor.info.get_mm_max_tokens_per_item(max_model_len, {"audio": 1}) == \
        {"audio": tokens}
