#!/usr/bin/env python
"""Build a tiny random-weight Granite 4.0 speech checkpoint (real architecture, ~3 M params).

The checkpoint directory is loadable by transformers (`GraniteSpeechForConditionalGeneration
.from_pretrained`) and laid out with the weight names vLLM's `GraniteSpeechForConditionalGeneration`
expects. It is the starting point of the project's test model (a separate training script
imports this module and reuses `build_tokenizer`, `build_config`, `build_model` and
`save_checkpoint`).

    python tools/tiny_model.py OUT_DIR [--seed N]

Design notes
------------
Architecture: the real classes from `transformers.models.granite_speech` (conformer CTC encoder
-> windowed blip-2 Q-Former projector -> granite LLM), shrunk:

* encoder: input_dim 160, 4 conformer layers, hidden 128, 4 heads x 32, context 200,
  max_pos_emb 512, conv kernel 15, feedforward_mult 4, conv_expansion_factor 2, output_dim 348
  (the real CTC label set: 0 blank, 1-255 Latin-1 `chr(i)`, 256-347 katakana).
* projector: blip_2_qformer, hidden 128, 2 layers, 4 heads, intermediate 512,
  encoder_hidden_size 128, cross_attention_frequency 1; window 15, downsample 5 (3 queries).
* text (granite): hidden 128, 2 layers, 2 heads (head_dim 64: vLLM's CPU attention rejects
  16), 2 KV heads, intermediate 512, max_position_embeddings 4096, tied embeddings.

Granite multipliers: the real 4.0-1b values (embedding_multiplier 12, residual_multiplier 0.22,
attention_multiplier 0.0078125 = 1/head_dim, logits_scaling 8) are muP settings tuned for a
2048-wide, 40-layer model; on a 2-layer, 128-wide model they shrink every residual update to a
fifth, force attention to 1/head_dim scaling (much flatter softmax at init) and divide the logits
by 8, all of which slows a small model's training. We use the neutral "standard transformer"
values instead: embedding_multiplier 1.0, residual_multiplier 1.0, attention_multiplier
1/sqrt(64) = 0.125 (ordinary scaled dot-product attention), logits_scaling 1.0. They are real
config fields, so vLLM and transformers still exercise the same code paths.

Projector init: with the default std 0.02 the Q-Former's cross-attention contributes almost
nothing next to its N(0, 1) query embeddings, so its output hardly depends on the audio. We
re-draw the projector's `nn.Linear` weights with std `PROJECTOR_INIT_STD` (seeded).

Tokenizer: byte-level BPE trained here with the `tokenizers` library on a generated corpus
(instructions, digit words in en/fr/de/es, `USER:`/`ASSISTANT:`, ASCII letters). Any text
encodes. The special tokens are appended after the trained vocabulary in the real model's
order: `<|pad|>`, `<|end_of_text|>` (bos = eos) and `<|audio|>` last (as in the real
checkpoint, where `<|audio|>` is the last id, 100352). No BOS is prepended when encoding.

Chat template: the real granite-4.0-1b-speech template could not be retrieved offline, so
`CHAT_TEMPLATE` is written to reproduce its documented behaviour: one user turn renders as
`USER: {content}\\n ASSISTANT:` with `add_generation_prompt=True`; system turns are dropped;
an assistant turn renders as ` ASSISTANT: {content}<|end_of_text|>\\n` (so a training target
is the generation prompt followed by " " + text + eos).

Weights: float32 safetensors (`model.safetensors`) with vLLM's names:
  transformers module            checkpoint key (vLLM)
  model.encoder.*            ->  encoder.*
  model.projector.*          ->  projector.*           (query, qformer.*, linear.*)
  model.language_model.*     ->  language_model.model.*
  lm_head.*                  ->  language_model.lm_head.*   (omitted: embeddings are tied)
transformers 5.x loads these names natively: its conversion mapping for model_type
`granite_speech` (transformers/conversion_mapping.py) renames `encoder`/`projector`/
`language_model.model`/`language_model.lm_head` back to its own module tree on load.
vLLM's loader packs q/k/v_proj -> qkv_proj and gate/up_proj -> gate_up_proj itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
from pathlib import Path

import torch
from torch import nn

# --------------------------------------------------------------------------- constants

AUDIO_TOKEN = "<|audio|>"
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|pad|>"

ASR_INSTRUCTION = "can you transcribe the speech into a written format?"
TRANSLATE_LANGUAGES = (
    "English", "French", "German", "Spanish", "Portuguese", "Japanese", "Italian", "Chinese",
)
DIGIT_WORDS = {
    "en": "zero one two three four five six seven eight nine".split(),
    "fr": "zéro un deux trois quatre cinq six sept huit neuf".split(),
    "de": "null eins zwei drei vier fünf sechs sieben acht neun".split(),
    "es": "cero uno dos tres cuatro cinco seis siete ocho nueve".split(),
}

BPE_VOCAB_SIZE = 640  # trained vocabulary (incl. the 256 byte symbols), before special tokens
PROJECTOR_INIT_STD = 0.1

# One user turn -> "USER: {content}\n ASSISTANT:" (generation prompt); system turns dropped.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- 'USER: ' + message['content'] + '\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- ' ASSISTANT: ' + message['content'] + eos_token + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- ' ASSISTANT:' -}}"
    "{%- endif -%}"
)

ENCODER_KWARGS = dict(
    input_dim=160,
    num_layers=4,
    hidden_dim=128,
    feedforward_mult=4,
    num_heads=4,
    dim_head=32,
    output_dim=348,
    context_size=200,
    max_pos_emb=512,
    dropout=0.1,
    conv_kernel_size=15,
    conv_expansion_factor=2,
)

PROJECTOR_KWARGS = dict(
    model_type="blip_2_qformer",
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=512,
    encoder_hidden_size=128,  # = encoder hidden_dim
    cross_attention_frequency=1,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    layer_norm_eps=1e-12,
    max_position_embeddings=2048,
    initializer_range=0.02,
    use_qformer_text_input=False,
)

TEXT_KWARGS = dict(
    model_type="granite",
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=2,  # head_dim 64
    num_key_value_heads=2,
    hidden_act="silu",
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    initializer_range=0.02,
    attention_bias=False,
    mlp_bias=False,
    attention_dropout=0.0,
    embedding_multiplier=1.0,
    residual_multiplier=1.0,
    attention_multiplier=1.0 / math.sqrt(64),
    logits_scaling=1.0,
    tie_word_embeddings=True,
    use_cache=True,
)

PREPROCESSOR_CONFIG = {
    "feature_extractor_type": "GraniteSpeechFeatureExtractor",
    "processor_class": "GraniteSpeechProcessor",
    "sampling_rate": 16000,
    "n_fft": 512,
    "win_length": 400,
    "hop_length": 160,
    "n_mels": 80,
    "feature_size": 80,
    "melspec_kwargs": {
        "sample_rate": 16000,
        "n_fft": 512,
        "win_length": 400,
        "hop_length": 160,
        "n_mels": 80,
    },
    "projector_window_size": 15,
    "projector_downsample_rate": 5,
    "padding_value": 0.0,
    "padding_side": "right",
    "return_attention_mask": False,
}

PROCESSOR_CONFIG = {
    "processor_class": "GraniteSpeechProcessor",
    "audio_token": AUDIO_TOKEN,
}

VLLM_PREFIXES = ("encoder.", "projector.", "language_model.model.", "language_model.lm_head.")

# transformers module-name prefix -> vLLM checkpoint prefix (first match wins)
_TO_VLLM = (
    ("model.encoder.", "encoder."),
    ("model.projector.", "projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)


# --------------------------------------------------------------------------- tokenizer

def _corpus(seed: int = 0) -> list[str]:
    """Deterministic text corpus for the BPE trainer."""
    rng = random.Random(seed)
    lines: list[str] = []
    asr_prompt = f"USER: {AUDIO_TOKEN}{ASR_INSTRUCTION}\n ASSISTANT:"
    for _ in range(50):
        lines.append(asr_prompt)
        lines.append(ASR_INSTRUCTION)
    for lang in TRANSLATE_LANGUAGES:
        for _ in range(20):
            lines.append(f"USER: {AUDIO_TOKEN}translate the speech to {lang}\n ASSISTANT:")
    all_words = [w for words in DIGIT_WORDS.values() for w in words]
    for lang, words in DIGIT_WORDS.items():
        for _ in range(200):
            seq = " ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))
            lines.append(" " + seq)
            lines.append(seq.capitalize() + ".")
    for _ in range(200):
        kws = ", ".join(rng.choice(all_words) for _ in range(rng.randint(1, 4)))
        lines.append(f"{ASR_INSTRUCTION} Keywords: {kws}")
    letters = "abcdefghijklmnopqrstuvwxyz"
    for _ in range(20):
        lines.append(letters + " " + letters.upper() + " 0123456789 .,?!:;'\"-()")
        lines.append(" ".join(letters) + " " + " ".join(letters.upper()))
    for _ in range(300):  # random ASCII "words"
        lines.append(" ".join(
            "".join(rng.choice(letters) for _ in range(rng.randint(1, 7)))
            for _ in range(rng.randint(1, 6))
        ))
    return lines


def build_tokenizer():
    """Train the small byte-level BPE tokenizer and wrap it as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    # The audio placeholder never enters BPE training (it is a special token): split lines
    # at it, so the text right after it ("can", "translate": no leading space) is learned too.
    corpus = [piece for line in _corpus() for piece in line.split(AUDIO_TOKEN) if piece]
    tok.train_from_iterator(corpus, trainer=trainer)
    # Appended after the trained vocabulary, in the real checkpoint's order (audio last).
    tok.add_special_tokens([PAD_TOKEN, EOS_TOKEN, AUDIO_TOKEN])

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=4096,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        add_bos_token=False,
        add_eos_token=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# --------------------------------------------------------------------------- config / model

def build_config(tokenizer):
    """GraniteSpeechConfig for the tiny model, sized to `tokenizer`."""
    from transformers.models.granite_speech import GraniteSpeechConfig, GraniteSpeechEncoderConfig

    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    text = dict(TEXT_KWARGS, vocab_size=len(tokenizer), bos_token_id=eos_id,
                eos_token_id=eos_id, pad_token_id=pad_id)
    config = GraniteSpeechConfig(
        text_config=text,
        encoder_config=GraniteSpeechEncoderConfig(**ENCODER_KWARGS),
        projector_config=dict(PROJECTOR_KWARGS),
        audio_token_index=audio_id,
        has_lora_adapter=False,
        downsample_rate=5,
        window_size=15,
        initializer_range=0.02,
        tie_word_embeddings=True,
    )
    config.architectures = ["GraniteSpeechForConditionalGeneration"]
    config.dtype = torch.float32
    return config


def build_model(config, seed: int = 0):
    """Seeded random-weight GraniteSpeechForConditionalGeneration (float32, eval mode)."""
    from transformers.models.granite_speech import GraniteSpeechForConditionalGeneration

    torch.manual_seed(seed)
    model = GraniteSpeechForConditionalGeneration(config).to(torch.float32)
    # Larger projector init so the Q-Former output depends on the audio (see module doc).
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.model.projector.modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * PROJECTOR_INIT_STD)
                if module.bias is not None:
                    module.bias.zero_()
    model.eval()
    return model


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- saving

def to_vllm_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's weights under vLLM's names (see module doc), contiguous float32 copies."""
    tied = bool(getattr(model.config.text_config, "tie_word_embeddings", False))
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # tied to language_model.model.embed_tokens.weight
        for src, dst in _TO_VLLM:
            if name.startswith(src):
                key = dst + name[len(src):]
                break
        else:
            raise KeyError(f"unexpected weight name {name!r}")
        t = tensor.detach().cpu()
        if t.is_floating_point():
            t = t.to(torch.float32)
        out[key] = t.contiguous().clone()
    return out


def save_checkpoint(model, tokenizer, out_dir) -> Path:
    """Write config, float32 safetensors (vLLM names), tokenizer and processor files."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.safetensors*"):
        stale.unlink()

    model.config.architectures = ["GraniteSpeechForConditionalGeneration"]
    model.config.dtype = torch.float32
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        gc = model.generation_config
        gc.bos_token_id = tokenizer.bos_token_id
        gc.eos_token_id = tokenizer.eos_token_id
        gc.pad_token_id = tokenizer.pad_token_id
        gc.save_pretrained(out)

    weights = out / "model.safetensors"
    save_file(to_vllm_state_dict(model), str(weights), metadata={"format": "pt"})
    weights.chmod(0o644)

    tokenizer.save_pretrained(out)
    # Keep the template inside tokenizer_config.json too (older readers look only there).
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["chat_template"] = CHAT_TEMPLATE
    # transformers 5 writes its internal "TokenizersBackend"; the generic fast-tokenizer class
    # name resolves to the same tokenizer.json-backed class in 5.x and also loads in 4.x.
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")

    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n")
    (out / "processor_config.json").write_text(json.dumps(PROCESSOR_CONFIG, indent=2) + "\n")
    return out


def dir_size(path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# --------------------------------------------------------------------------- CLI

def _verify(out_dir: Path) -> None:
    from transformers import AutoTokenizer
    from transformers.models.granite_speech import GraniteSpeechForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(out_dir)
    model = GraniteSpeechForConditionalGeneration.from_pretrained(out_dir)
    model.eval()
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": AUDIO_TOKEN + ASR_INSTRUCTION}],
        tokenize=False, add_generation_prompt=True,
    )
    n_samples = 16000  # 1 s -> 101 mel frames -> 50 encoder frames -> 4 windows -> 12 tokens
    n_enc = (n_samples // 160 + 1) // 2
    n_tok = math.ceil(n_enc / 15) * 3
    prompt = prompt.replace(AUDIO_TOKEN, AUDIO_TOKEN * n_tok)
    ids = tok(prompt, return_tensors="pt").input_ids
    feats = torch.randn(1, n_enc, 160)
    with torch.no_grad():
        logits = model(input_ids=ids, input_features=feats).logits
    print(f"forward ok: input_ids {tuple(ids.shape)} -> logits {tuple(logits.shape)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-verify", action="store_true", help="skip the transformers reload check")
    args = parser.parse_args(argv)

    tokenizer = build_tokenizer()
    config = build_config(tokenizer)
    model = build_model(config, seed=args.seed)
    out = save_checkpoint(model, tokenizer, args.out_dir)

    print(f"tokenizer: {len(tokenizer)} tokens, {AUDIO_TOKEN} = {config.audio_token_index}, "
          f"eos = {tokenizer.eos_token_id}, pad = {tokenizer.pad_token_id}")
    print(f"parameters: {count_parameters(model):,}")
    if not args.no_verify:
        _verify(out)
    print(f"wrote {out} ({dir_size(out) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
