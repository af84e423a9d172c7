"""Granite speech for vLLM with a torch-only audio processor.

vLLM's built-in Granite processor instantiates transformers'
``GraniteSpeechFeatureExtractor``, which needs torchaudio; torchaudio has no CPU
build that works beside vLLM's CPU torch. These subclasses replace every place
vLLM would reach the Hugging Face processor with ``granite_speech_server.audio.features``,
which computes the same log-mel features in plain torch. The neural network
itself is vLLM's; ``granite_speech_server.vllm_plugin.encoder`` batches its encoder so that each
audio's embeddings don't depend on what it is batched with.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from transformers import BatchFeature

from vllm.model_executor.models.granite_speech import (
    GraniteSpeechDummyInputsBuilder,
    GraniteSpeechForConditionalGeneration,
    GraniteSpeechMultiModalProcessor,
    GraniteSpeechProcessingInfo,
)
from vllm.model_executor.models.interfaces import MultiModalEmbeddings
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.parse import AudioProcessorItems, MultiModalDataParser
from vllm.multimodal.processing import PromptReplacement
from vllm.transformers_utils.repo_utils import get_hf_file_to_dict

from granite_speech_server.audio.features import (
    SAMPLE_RATE,
    audio_token_count,
    log_mel_features,
    longest_audio_samples,
)
from granite_speech_server.vllm_plugin.encoder import encode_audios

AUDIO_PLACEHOLDER = "<|audio|>"


@functools.lru_cache(maxsize=8)
def _sampling_rate(model: str, revision: str | None) -> int:
    """The sampling rate the checkpoint's processor files declare (the real checkpoint
    and the test model both ship ``preprocessor_config.json``), checked against ours."""
    rate = SAMPLE_RATE
    for name in ("preprocessor_config.json", "processor_config.json"):
        found = get_hf_file_to_dict(name, model, revision) or {}
        found = found.get("audio_processor", found)
        rate = int(found.get("sampling_rate", rate))
    if rate != SAMPLE_RATE:
        raise ValueError(
            f"{model}: feature extractor expects {rate} Hz; "
            f"this server's front end is built for {SAMPLE_RATE} Hz."
        )
    return rate


def _audio_tokens(num_samples: int, hf_config: Any) -> int:
    """With config.json's ``window_size`` and ``downsample_rate``: what vLLM builds the
    projector from, so the placeholders match the embeddings it makes (the server counts
    with the same values, ``VllmEngine.audio_tokens``)."""
    return audio_token_count(num_samples, hf_config.window_size, hf_config.downsample_rate)


class GraniteSpeechServerProcessingInfo(GraniteSpeechProcessingInfo):
    def get_hf_processor(self, **kwargs: object):
        raise RuntimeError(
            "The Hugging Face Granite processor needs torchaudio; this plugin "
            "replaces it and must never reach it."
        )

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {"text_kwargs": set(), "audio_kwargs": set()}

    def get_data_parser(self) -> MultiModalDataParser:
        # soxr, not vLLM's torchaudio default; the server hands over 16 kHz
        # audio anyway, so this only matters for direct engine callers.
        return MultiModalDataParser(
            target_sr=_sampling_rate(self.ctx.model_config.model,
                                     self.ctx.model_config.revision),
            audio_resample_method="soxr",
            expected_hidden_size=self._get_expected_hidden_size(),
        )

    def audio_token_count(self, num_samples: int) -> int:
        return _audio_tokens(num_samples, self.get_hf_config())

    def get_max_audio_len(self) -> int:
        """The longest audio a prompt can hold: its audio tokens and one more fill the
        context. vLLM's own class says 500 s whatever the context, and profiles the
        model with that much audio at start-up (six minutes at full size on a CPU)."""
        config = self.get_hf_config()
        return longest_audio_samples(self.ctx.model_config.max_model_len - 1,
                                     config.window_size, config.downsample_rate)

    def profiled_audio_len(self) -> int:
        """The dummy audio vLLM profiles with: the longest a prompt can hold, or less
        where the engine's caller says its prompts carry less
        (``limit_mm_per_prompt={"audio": {"count": 1, "length": samples}}``), as the
        server does from its longest segment."""
        length = self.get_max_audio_len()
        options = self.ctx.get_mm_config().limit_per_prompt.get("audio")
        if getattr(options, "length", None):
            length = min(length, options.length)
        return length

    def get_mm_max_tokens_per_item(self, seq_len: int,
                                   mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        # What the dummy audio would give, without processing one to find out.
        return {"audio": self.audio_token_count(self.profiled_audio_len())}


class GraniteSpeechServerDummyInputsBuilder(GraniteSpeechDummyInputsBuilder):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return AUDIO_PLACEHOLDER * mm_counts.get("audio", 0)


class GraniteSpeechServerMultiModalProcessor(GraniteSpeechMultiModalProcessor):
    def _get_hf_mm_text(self, mm_counts: Mapping[str, int]) -> str | None:
        # The prompt arrives tokenized; the features need no text.
        return None

    def _call_hf_processor(
        self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        audios = hf_data.get("audio", [])
        features = [log_mel_features(audio) for audio in audios]
        sizes = [self.info.audio_token_count(len(audio)) for audio in audios]
        return BatchFeature(
            {"input_features": features, "audio_embed_sizes": torch.tensor(sizes)}
        )

    def _postprocess_hf_mm_data(
        self,
        mm_data: Mapping[str, object],
        hf_processor_mm_kwargs: Mapping[str, object],
        processed_data: BatchFeature,
    ) -> BatchFeature:
        return processed_data

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        audio_token_id = self.info.get_hf_config().audio_token_index

        def replacement(item_idx: int) -> list[int]:
            audio = mm_items.get_items("audio", AudioProcessorItems).get(item_idx)
            return [audio_token_id] * self.info.audio_token_count(len(audio))

        return [
            PromptReplacement(
                modality="audio", target=[audio_token_id], replacement=replacement
            )
        ]


@MULTIMODAL_REGISTRY.register_processor(
    GraniteSpeechServerMultiModalProcessor,
    info=GraniteSpeechServerProcessingInfo,
    dummy_inputs=GraniteSpeechServerDummyInputsBuilder,
)
class GraniteSpeechServerForConditionalGeneration(GraniteSpeechForConditionalGeneration):
    """vLLM's Granite speech network, fed by the torch-only processor above, each audio
    encoded as if alone (``granite_speech_server.vllm_plugin.encoder``)."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = super().load_weights(weights)
        # Inference only: vLLM's encoder layers are plain torch modules whose parameters
        # want gradients, and its CPU worker runs the start-up profile with autograd on.
        self.requires_grad_(False)
        return loaded

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        features = kwargs.get("input_features")
        if features is None:
            return []
        sizes = torch.as_tensor(kwargs["audio_embed_sizes"]).flatten().tolist()
        # A list of (frames, 160) tensors, or one stacked tensor when all are one length.
        audios = [feature.reshape(-1, feature.shape[-1]) for feature in features]
        return encode_audios(self.encoder, self.projector, audios, sizes)

    @classmethod
    def get_num_audio_tokens(cls, audio_duration_s: float, stt_config: Any,
                             model_config: Any) -> int | None:
        return _audio_tokens(int(audio_duration_s * stt_config.sample_rate),
                             model_config.hf_config)
