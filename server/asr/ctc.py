"""The speech encoder and its CTC head, run beside vLLM.

vLLM keeps encoder outputs to itself, so word timing needs a second encoder
pass: the same checkpoint's ``encoder.*`` weights, loaded once into
transformers' Granite encoder, on the engine's device. Its CTC head gives
per-20 ms-frame label posteriors for forced alignment (``granite_speech_server.asr.align``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import torch

from granite_speech_server.audio.features import log_mel_features

ENCODER_PREFIX = "encoder."


def checkpoint_files(model: str, revision: str | None = None) -> Path:
    """The checkpoint directory: as given, or the hub snapshot vLLM already downloaded."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, revision=revision,
                                  allow_patterns=["config.json", "*.safetensors"]))


def checkpoint_weights(root: Path, prefix: str = ENCODER_PREFIX):
    """(name without ``prefix``, tensor) for each of the checkpoint's weights under it."""
    from safetensors import safe_open

    for path in sorted(root.glob("*.safetensors")):
        with safe_open(path, framework="pt") as weights:
            for key in weights.keys():
                if key.startswith(prefix):
                    yield key[len(prefix):], weights.get_tensor(key)


class CtcHead:
    def __init__(self, encoder: torch.nn.Module, device: torch.device) -> None:
        self.encoder = encoder.eval().to(device)
        self.device = device
        # One forward at a time: CPU threads are better spent inside one batch.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model: str, dtype: torch.dtype | str | None = None,
             device: str | None = None) -> CtcHead:
        """The checkpoint's encoder in ``dtype`` (the engine's; default float32) on
        ``device`` (default: the GPU if there is one), each weight read once, straight
        into it: at full size a float32 copy of the encoder was 1.7 GB beside vLLM."""
        from transformers import GraniteSpeechEncoderConfig
        from transformers.initialization import no_init_weights
        from transformers.models.granite_speech.modeling_granite_speech import (
            GraniteSpeechCTCEncoder,
        )

        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype or torch.float32
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        root = checkpoint_files(model)
        config = json.loads((root / "config.json").read_text())
        with no_init_weights(), device:  # every weight is about to be replaced
            encoder = GraniteSpeechCTCEncoder._from_config(
                GraniteSpeechEncoderConfig(**config["encoder_config"]), dtype=dtype)
        expected = {name: tensor.dtype for name, tensor in encoder.state_dict().items()}
        state = {}
        for name, tensor in checkpoint_weights(root):
            if name in expected:  # a float stays float in the engine's dtype; ints stay
                state[name] = tensor.to(device, dtype if tensor.is_floating_point() else None)
        missing = sorted(expected.keys() - state.keys())
        if missing:
            raise ValueError(f"{model}: encoder weights missing from the checkpoint: "
                             f"{missing[:5]}")
        encoder.load_state_dict(state, assign=True)
        return cls(encoder, device)

    def log_posteriors(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """(frames, labels) log-probabilities per clip. CPU/GPU-bound: call from a thread.

        Clips of one length go through as a batch; different lengths run apart,
        since the conformer has no padding mask and padding would shift results."""
        features = [log_mel_features(audio) for audio in audios]
        results: list[np.ndarray | None] = [None] * len(features)
        by_length: dict[int, list[int]] = {}
        for i, feats in enumerate(features):
            by_length.setdefault(feats.shape[0], []).append(i)
        dtype = next(self.encoder.parameters()).dtype
        # Inference mode whatever the caller's: no autograd record of the activations.
        with self._lock, torch.inference_mode():
            for indices in by_length.values():
                batch = torch.stack([features[i] for i in indices]).to(self.device)
                hidden = self.encoder(batch.to(dtype)).last_hidden_state
                log_probs = torch.log_softmax(self.encoder.out(hidden).float(), dim=-1)
                for i, row in zip(indices, log_probs.cpu().numpy()):
                    results[i] = row
        return results
