"""The project's vLLM plugin is installed, registers its model class, and keeps the
CPU environment free of the CUDA-only audio/vision packages."""

from __future__ import annotations

import importlib.util
from importlib.metadata import entry_points

import pytest

from server.vllm_plugin import ARCHITECTURE, register


def test_plugin_entry_point_is_installed():
    names = {ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert "server.vllm_plugin:register" in names


def test_register_adds_the_architecture_once():
    from vllm import ModelRegistry

    register()
    register()
    assert ARCHITECTURE in ModelRegistry.get_supported_archs()


def test_model_class_is_vllms_granite_network_with_our_processor():
    from vllm.model_executor.models.granite_speech import GraniteSpeechForConditionalGeneration

    from server.vllm_plugin import granite

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
