#!/usr/bin/env python
"""A random-weight checkpoint of granite-4.0-1b-speech's exact shape, for size-true tests.

The real weights can't be downloaded here, and the 3 M-parameter test model can't show
what only size shows (a worker that autograd grew to 20 GB, a profile run that took six
minutes). This writes a checkpoint that is the real one in everything but its values:

* the real config (``../shared/MODEL.md``, "Checkpoint shape"): 16-layer 1024-wide
  conformer encoder, 2-layer Q-Former projector, 40-layer granite LLM with an untied
  ``lm_head``; top-level dtype bfloat16;
* weights in bfloat16 under vLLM's names (``encoder.*``, ``projector.*``,
  ``language_model.model.*``, ``language_model.lm_head.*``), sharded with an index,
  drawn N(0, initializer_range) (norms 1, biases 0), seeded: ~2.3 B parameters, 4.3 GiB;
* a tokenizer with the real special-token ids (``<|pad|>`` 100256, ``<|end_of_text|>``
  100257 as bos and eos, ``<|audio|>`` 100352, vocabulary 100353) and the real 193-byte
  chat template; its ordinary vocabulary is the test model's byte-level BPE, padded.

    python tools/full_size_model.py [OUT_DIR] [--seed N]

Without OUT_DIR it writes ``~/.cache/granite-speech-server/full-size-granite-speech`` (under
``$XDG_CACHE_HOME`` if set), outside the repository. A directory already holding this
script's checkpoint of the same spec is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
               / "granite-speech-server" / "full-size-granite-speech")
"""Outside the work tree, so every clone (CI's are fresh) reuses the one written."""
TINY_MODEL = REPO / "tests" / "fixtures" / "tiny-granite-speech"
DONE_FILE = "full-size-spec.json"

PAD_ID, EOS_ID, AUDIO_ID, VOCAB_SIZE = 100256, 100257, 100352, 100353

# The real checkpoint's chat_template.jinja (193 bytes): it ignores add_generation_prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{{ message['content'] }}\n ASSISTANT:{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] }}{% endif %}{% endfor %}"
)

ENCODER_CONFIG = {
    "model_type": "granite_speech_encoder", "input_dim": 160, "num_layers": 16,
    "hidden_dim": 1024, "feedforward_mult": 4, "num_heads": 8, "dim_head": 128,
    "output_dim": 348, "context_size": 200, "max_pos_emb": 512, "dropout": 0.1,
    "conv_kernel_size": 15, "conv_expansion_factor": 2,
}
PROJECTOR_CONFIG = {
    "model_type": "blip_2_qformer", "hidden_size": 1024, "num_hidden_layers": 2,
    "num_attention_heads": 16, "intermediate_size": 4096, "encoder_hidden_size": 1024,
    "cross_attention_frequency": 1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "layer_norm_eps": 1e-12,
    "max_position_embeddings": 2048, "initializer_range": 0.02,
    "use_qformer_text_input": False, "vocab_size": 30522, "pad_token_id": 0,
}
TEXT_CONFIG = {
    "model_type": "granite", "vocab_size": VOCAB_SIZE, "hidden_size": 2048,
    "intermediate_size": 4096, "num_hidden_layers": 40, "num_attention_heads": 16,
    "num_key_value_heads": 4, "hidden_act": "silu", "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "initializer_range": 0.02,
    "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
    "embedding_multiplier": 12.0, "residual_multiplier": 0.22,
    "attention_multiplier": 0.0078125, "logits_scaling": 8.0,
    "tie_word_embeddings": False, "bos_token_id": EOS_ID, "eos_token_id": EOS_ID,
    "pad_token_id": PAD_ID, "use_cache": True, "dtype": "float32",
}
CONFIG = {
    "architectures": ["GraniteSpeechForConditionalGeneration"],
    "model_type": "granite_speech",
    "audio_token_index": AUDIO_ID,
    "downsample_rate": 5,
    "window_size": 15,
    "has_lora_adapter": False,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "encoder_config": ENCODER_CONFIG,
    "projector_config": PROJECTOR_CONFIG,
    "text_config": TEXT_CONFIG,
}

SHARD_BYTES = 2 * 1024**3
# transformers module names -> the checkpoint's (vLLM's) names; first match wins.
TO_CHECKPOINT_NAMES = (
    ("model.encoder.", "encoder."),
    ("model.projector.", "projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)


def spec_digest(seed: int) -> str:
    """Changes whenever what this script writes would change (not with its comments):
    rewriting 4.3 GiB costs a minute and a half."""
    import inspect

    writers = [inspect.getsource(f) for f in (write_checkpoint, write_tokenizer,
                                              checkpoint_shapes, random_tensor, write_weights)]
    text = json.dumps([CONFIG, CHAT_TEMPLATE, seed, writers], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_checkpoint(out_dir: Path = DEFAULT_DIR, seed: int = 0) -> Path:
    """The checkpoint in ``out_dir``, written first unless it is there already. Another
    process writing it meanwhile is waited for, not raced."""
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    done = out_dir / DONE_FILE
    with (out_dir.parent / f".{out_dir.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists() and json.loads(done.read_text()).get("digest") == spec_digest(seed):
            return out_dir
        write_checkpoint(out_dir, seed)
        done.write_text(json.dumps({"digest": spec_digest(seed), "seed": seed}) + "\n")
    return out_dir


def write_checkpoint(out_dir: Path, seed: int = 0) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("*.safetensors"), out_dir / DONE_FILE]:
        stale.unlink(missing_ok=True)
    (out_dir / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    (out_dir / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": EOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}) + "\n")
    for name in ("preprocessor_config.json", "processor_config.json"):
        (out_dir / name).write_bytes((TINY_MODEL / name).read_bytes())
    write_tokenizer(out_dir)
    write_weights(out_dir, seed)


def write_tokenizer(out_dir: Path) -> None:
    """The test model's byte-level BPE, its vocabulary padded to the real special ids."""
    from tokenizers import AddedToken, Tokenizer, models

    tiny = json.loads((TINY_MODEL / "tokenizer.json").read_text())
    vocab = {token: index for token, index in tiny["model"]["vocab"].items()
             if index < PAD_ID}
    for filler in range(len(vocab), PAD_ID):
        vocab[f"<|unused_{filler}|>"] = filler
    tiny["model"]["vocab"] = vocab
    tiny["added_tokens"] = []
    tokenizer = Tokenizer.from_str(json.dumps(tiny))
    specials = ["<|pad|>", "<|end_of_text|>",
                *(f"<|reserved_{i}|>" for i in range(EOS_ID + 1, AUDIO_ID)), "<|audio|>"]
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in specials])
    assert tokenizer.token_to_id("<|audio|>") == AUDIO_ID, tokenizer.get_vocab_size()
    assert tokenizer.token_to_id("<|end_of_text|>") == EOS_ID
    tokenizer.save(str(out_dir / "tokenizer.json"))
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|end_of_text|>",
        "eos_token": "<|end_of_text|>", "pad_token": "<|pad|>", "model_max_length": 4096,
        "padding_side": "left", "clean_up_tokenization_spaces": False,
        "add_bos_token": False, "add_eos_token": False,
    }, indent=2) + "\n")


def checkpoint_shapes() -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Every tensor of the real model, under the checkpoint's names (built on the meta
    device: nothing is allocated)."""
    from transformers.models.granite_speech import (
        GraniteSpeechConfig,
        GraniteSpeechForConditionalGeneration,
    )

    config = GraniteSpeechConfig(**{k: v for k, v in CONFIG.items()
                                    if k not in ("architectures", "torch_dtype")})
    with torch.device("meta"):
        model = GraniteSpeechForConditionalGeneration(config)
    shapes = {}
    for name, tensor in model.state_dict().items():
        prefix, renamed = next((src, dst) for src, dst in TO_CHECKPOINT_NAMES
                               if name.startswith(src))
        shapes[renamed + name[len(prefix):]] = (tensor.shape, tensor.dtype)
    return shapes


def random_tensor(name: str, shape: torch.Size, dtype: torch.dtype,
                  generator: torch.Generator) -> torch.Tensor:
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)  # batch norm's num_batches_tracked
    if name.endswith(("running_var", "norm.weight", "layernorm.weight", "LayerNorm.weight")) \
            or (len(shape) == 1 and "norm" in name and name.endswith("weight")):
        return torch.ones(shape, dtype=torch.bfloat16)
    if name.endswith(("bias", "running_mean")):
        return torch.zeros(shape, dtype=torch.bfloat16)
    return (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)


def write_weights(out_dir: Path, seed: int) -> None:
    """Shard by shard: at most one shard (2 GiB) is in memory at a time."""
    from safetensors.torch import save_file

    shards: list[list[tuple[str, torch.Size, torch.dtype]]] = [[]]
    size = 0
    for name, (shape, dtype) in sorted(checkpoint_shapes().items()):
        nbytes = shape.numel() * (2 if dtype.is_floating_point else dtype.itemsize)
        if size and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape, dtype))
        size += nbytes
    generator = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for number, specs in enumerate(shards, start=1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        shard = {name: random_tensor(name, shape, dtype, generator)
                 for name, shape, dtype in specs}
        save_file(shard, str(out_dir / file), metadata={"format": "pt"})
        (out_dir / file).chmod(0o644)
        weight_map.update(dict.fromkeys(shard, file))
        total += sum(t.nbytes for t in shard.values())
        del shard
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, nargs="?", default=DEFAULT_DIR)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = ensure_checkpoint(args.out_dir, args.seed)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"{out}: {size / 1024**3:.2f} GiB of weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
