"""tools/tiny_model.py builds a tiny Granite speech checkpoint that transformers and vLLM accept."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tools import tiny_model

ROOT = Path(__file__).resolve().parents[1]
ASR_CONTENT = "<|audio|>can you transcribe the speech into a written format?"
VLLM_PREFIXES = ("encoder.", "projector.", "language_model.model.", "language_model.lm_head.")


@pytest.fixture(scope="module")
def tm():
    return tiny_model


@pytest.fixture(scope="module")
def built(tm, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_granite_speech")
    tokenizer = tm.build_tokenizer()
    config = tm.build_config(tokenizer)
    model = tm.build_model(config, seed=0)
    tm.save_checkpoint(model, tokenizer, out)
    return out, tokenizer, config, model


def test_chat_template_and_single_audio_token(built):
    from transformers import AutoTokenizer

    out, _, config, _ = built
    tok = AutoTokenizer.from_pretrained(out)
    prompt = tok.apply_chat_template(
        [{"role": "system", "content": "dropped"}, {"role": "user", "content": ASR_CONTENT}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt == f"USER: {ASR_CONTENT}\n ASSISTANT:"
    ids = tok(prompt).input_ids
    audio_id = tok.convert_tokens_to_ids("<|audio|>")
    assert audio_id == config.audio_token_index
    assert ids.count(audio_id) == 1
    assert tok.eos_token == tok.bos_token == "<|end_of_text|>"
    assert tok.pad_token == "<|pad|>"
    assert len(tok) == config.text_config.vocab_size
    assert 300 <= len(tok) <= 1000
    # Byte-level: anything round-trips.
    text = "Grüße, zéro fünf 日本語 カタカナ!"
    assert tok.decode(tok(text).input_ids) == text


def test_parameter_count(tm, built):
    _, _, _, model = built
    assert tm.count_parameters(model) <= 5_000_000


def test_weight_names_are_vllm_names(built):
    from safetensors import safe_open

    out, _, _, model = built
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert all(f.get_tensor(k).dtype in (torch.float32, torch.int64) for k in keys)
    assert keys and all(k.startswith(VLLM_PREFIXES) for k in keys), sorted(
        k for k in keys if not k.startswith(VLLM_PREFIXES)
    )
    # Names vLLM's module tree uses (q/k/v and gate/up stay unpacked: vLLM's loader packs them).
    for name in (
        "encoder.input_linear.weight",
        "encoder.layers.0.attn.to_kv.weight",
        "encoder.layers.0.attn.rel_pos_emb.weight",
        "encoder.layers.0.conv.depth_conv.conv.weight",
        "encoder.layers.0.conv.batch_norm.running_var",
        "encoder.out.weight",
        "encoder.out_mid.weight",
        "projector.query",
        "projector.qformer.layernorm.weight",
        "projector.qformer.encoder.layer.0.crossattention.attention.key.weight",
        "projector.qformer.encoder.layer.0.intermediate_query.dense.weight",
        "projector.qformer.encoder.layer.0.output_query.dense.weight",
        "projector.linear.weight",
        "language_model.model.embed_tokens.weight",
        "language_model.model.layers.0.self_attn.q_proj.weight",
        "language_model.model.layers.0.self_attn.k_proj.weight",
        "language_model.model.layers.0.mlp.gate_proj.weight",
        "language_model.model.norm.weight",
    ):
        assert name in keys, name
    assert not any(".model.model." in k for k in keys)


def test_config_and_processor_files(built):
    out, _, _, _ = built
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["GraniteSpeechForConditionalGeneration"]
    assert cfg["has_lora_adapter"] is False
    assert cfg["downsample_rate"] == 5 and cfg["window_size"] == 15
    assert cfg["dtype"] == "float32"
    assert cfg["encoder_config"]["output_dim"] == 348
    assert cfg["text_config"]["hidden_size"] // cfg["text_config"]["num_attention_heads"] == 64
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["feature_extractor_type"] == "GraniteSpeechFeatureExtractor"
    assert (pre["sampling_rate"], pre["hop_length"], pre["projector_window_size"]) == (16000, 160, 15)
    proc = json.loads((out / "processor_config.json").read_text())
    assert proc == {"processor_class": "GraniteSpeechProcessor", "audio_token": "<|audio|>"}


def test_transformers_loads_and_runs(built):
    from transformers import AutoTokenizer
    from transformers.models.granite_speech import GraniteSpeechForConditionalGeneration

    out, _, _, model = built
    loaded, info = GraniteSpeechForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ref = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, ref[name]), name

    tok = AutoTokenizer.from_pretrained(out)
    n_enc = (16000 // 160 + 1) // 2  # 1 s of audio
    n_audio = math.ceil(n_enc / 15) * 3
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": ASR_CONTENT}], tokenize=False, add_generation_prompt=True
    ).replace("<|audio|>", "<|audio|>" * n_audio)
    ids = tok(prompt, return_tensors="pt").input_ids
    loaded.eval()
    with torch.no_grad():
        logits = loaded(input_ids=ids, input_features=torch.randn(1, n_enc, 160)).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert torch.isfinite(logits).all()


def test_projector_output_depends_on_audio(built):
    _, _, _, model = built
    torch.manual_seed(0)
    with torch.no_grad():
        y = model.model.projector(torch.randn(32, 15, 128))  # 32 windows -> (32, 3, hidden)
    assert y.std(0).mean() > 0.3 * y.std()


def test_deterministic(tm, built):
    _, _, config, model = built
    again = tm.build_model(config, seed=0)
    a, b = model.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
