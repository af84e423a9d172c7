"""Is this checkpoint a Granite speech model this server can run? Checked before vLLM starts.

vLLM takes a minute or more to start and reports a checkpoint that doesn't fit as a stack
trace from deep inside its weight loader (or a shape error in the middle of its memory
profile). Here the config and, for a local directory, the weights' names and shapes
(read from the safetensors headers, no tensor loaded) are checked against what the
plugin's front end and network need, and a misfit is one line that names it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from granite_speech_server.audio.features import FEATURE_DIM

GRANITE_SPEECH_MODEL_TYPE = "granite_speech"
ENCODER_FIELDS = ("input_dim", "num_layers", "hidden_dim", "num_heads", "dim_head",
                  "output_dim", "context_size", "max_pos_emb", "conv_kernel_size")


class ModelUnavailable(RuntimeError):
    """The checkpoint can't be found or isn't a Granite speech model (start-up only)."""


def check_granite_speech(model: str, revision: str | None = None) -> dict:
    """The checkpoint's config, once it is known to fit; else ``ModelUnavailable``."""
    config = _read_config(model, revision)
    problem = config_problem(config)
    if problem is None and Path(model).is_dir():
        problem = weights_problem(config, Path(model))
    if problem is not None:
        raise ModelUnavailable(f"Model '{model}' doesn't fit this server: {problem}.")
    return config


def _read_config(model: str, revision: str | None) -> dict:
    from huggingface_hub import hf_hub_download

    try:
        if Path(model).is_dir():
            path = Path(model) / "config.json"
        else:
            # The hub client logs every retry; the one line below says it all.
            logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
            path = Path(hf_hub_download(model, "config.json", revision=revision))
        config = json.loads(path.read_text())
    except Exception as exc:  # noqa: BLE001 - any failure here means "can't get the model"
        raise ModelUnavailable(
            f"Model '{model}' can't be loaded ({type(exc).__name__}: {exc}). "
            "Without network access or a local Hugging Face cache, point MODEL "
            "(--model) at a local checkpoint directory, e.g. "
            "MODEL=tests/fixtures/tiny-granite-speech."
        ) from exc
    if config.get("model_type") != GRANITE_SPEECH_MODEL_TYPE:
        raise ModelUnavailable(
            f"Model '{model}' is a '{config.get('model_type')}' model, not a Granite "
            f"speech model (model_type '{GRANITE_SPEECH_MODEL_TYPE}')."
        )
    return config


def config_problem(config: dict) -> str | None:
    """What in ``config`` the plugin can't run, or None."""
    encoder = config.get("encoder_config") or {}
    missing = [field for field in ENCODER_FIELDS if field not in encoder]
    if missing:
        return f"encoder_config lacks {', '.join(missing)}"
    if encoder["input_dim"] != FEATURE_DIM:
        return (f"encoder_config.input_dim is {encoder['input_dim']}; the audio front end "
                f"gives {FEATURE_DIM} (two stacked 80-bin log-mel frames)")
    if encoder["hidden_dim"] != encoder["num_heads"] * encoder["dim_head"]:
        return (f"encoder_config.hidden_dim {encoder['hidden_dim']} is not num_heads x "
                f"dim_head ({encoder['num_heads']} x {encoder['dim_head']})")
    projector = config.get("projector_config") or {}
    if projector.get("encoder_hidden_size", encoder["hidden_dim"]) != encoder["hidden_dim"]:
        return (f"projector_config.encoder_hidden_size {projector['encoder_hidden_size']} "
                f"differs from the encoder's hidden_dim {encoder['hidden_dim']}")
    window, rate = config.get("window_size", 15), config.get("downsample_rate", 5)
    if rate <= 0 or window % rate:
        return f"window_size {window} is not a multiple of downsample_rate {rate}"
    if not config.get("text_config"):
        return "config.json has no text_config (the language model)"
    return None


def weights_problem(config: dict, root: Path) -> str | None:
    """What the weight files lack or size differently from ``config``, or None."""
    shapes = _weight_shapes(root)
    if not shapes:
        return f"no *.safetensors weights in {root}"
    encoder = config["encoder_config"]
    hidden, layers = encoder["hidden_dim"], encoder["num_layers"]
    expected = {
        "encoder.input_linear.weight": [hidden, encoder["input_dim"]],
        f"encoder.layers.{layers - 1}.attn.to_q.weight": [hidden, hidden],
        "encoder.out.weight": [encoder["output_dim"], hidden],
    }
    text = config["text_config"]
    if not config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)):
        expected["language_model.lm_head.weight"] = [text["vocab_size"], text["hidden_size"]]
    for name, shape in expected.items():
        if name not in shapes:
            return f"the weights lack {name}"
        if shapes[name] != shape:
            return (f"{name} is {'x'.join(map(str, shapes[name]))} in the weights, "
                    f"{'x'.join(map(str, shape))} by config.json")
    if f"encoder.layers.{layers}.attn.to_q.weight" in shapes:
        return f"the weights have more encoder layers than config.json's {layers}"
    return None


def _weight_shapes(root: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    shapes = {}
    for path in sorted(root.glob("*.safetensors")):
        with safe_open(path, framework="pt") as weights:
            for name in weights.keys():
                shapes[name] = list(weights.get_slice(name).get_shape())
    return shapes
