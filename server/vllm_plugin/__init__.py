"""vLLM general plugin: the Granite speech model with the project's own audio front end.

vLLM calls ``register()`` in every process it starts (API, engine core, workers),
through the ``vllm.general_plugins`` entry point declared in pyproject.toml. The
model class is registered by import path so that importing this package stays
cheap: vLLM's model modules load only when the engine builds the model. On CPU hosts
it also stops the engine's processes from busy-waiting for each other (``shm_wait``);
on any host, an engine core woken from idle takes in a whole burst of requests before
its next step (``intake``).
"""

ARCHITECTURE = "GraniteSpeechServerForConditionalGeneration"
"""Architecture name the server passes as ``hf_overrides`` to select the class."""

_MODEL_CLASS = "granite_speech_server.vllm_plugin.granite:GraniteSpeechServerForConditionalGeneration"


def register() -> None:
    from vllm import ModelRegistry

    from granite_speech_server.vllm_plugin import intake, shm_wait

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, _MODEL_CLASS)
    spin_ms = shm_wait.spin_ms_for_this_host()
    if spin_ms is not None:
        shm_wait.install(spin_ms)
    intake.install(intake.configured_gather_ms())
