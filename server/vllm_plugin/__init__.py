"""vLLM general plugin: the Granite speech model with the project's own audio front end.

vLLM calls ``register()`` in every process it starts (API, engine core, workers), in
every vLLM run of the environment this package is installed in, through the
``vllm.general_plugins`` entry point declared in pyproject.toml. The model class is
registered by import path so that importing this package stays cheap: vLLM's model
modules load only when the engine builds the model, and only a run that asks for
``ARCHITECTURE`` ever uses it.

Changes to vLLM's own internals are for the engines this server starts, where
``ENGINE_ENV`` is set (``granite_speech_server.asr.vllm_engine``); any other vLLM run
in the environment is left as vLLM made it. In the server's engines, on CPU hosts,
the engine's processes stop busy-waiting for each other (``shm_wait``), and on any
host an engine core woken from idle takes in a whole burst of requests before its
next step (``intake``).
"""

import logging
import os

ARCHITECTURE = "GraniteSpeechServerForConditionalGeneration"
"""Architecture name the server passes as ``hf_overrides`` to select the class."""

ENGINE_ENV = "GRANITE_SPEECH_SERVER_ENGINE"
"""Set to ``1`` by the server in the environment of the engine it starts: only there
does ``register()`` change vLLM's internals."""

_MODEL_CLASS = f"{__name__}.granite:{ARCHITECTURE}"  # the class is named for its architecture

logger = logging.getLogger(__name__)


def register() -> None:
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, _MODEL_CLASS)
    if started_by_this_server():
        tune_engine_process()


def started_by_this_server() -> bool:
    """Whether this process belongs to an engine the server started."""
    return os.environ.get(ENGINE_ENV) == "1"


def tune_engine_process() -> None:
    """This process's shared-memory waits and engine-core intake, as the server runs them."""
    from granite_speech_server.vllm_plugin import intake, shm_wait

    spin_ms = shm_wait.spin_ms_for_this_host()
    if spin_ms is not None:
        shm_wait.install(spin_ms)
    gather_ms = intake.configured_gather_ms()
    intake.install(gather_ms)
    logger.debug("vLLM tuned for this server's engine (pid %d): spin %s ms, gather %s ms",
                 os.getpid(), spin_ms, gather_ms)
