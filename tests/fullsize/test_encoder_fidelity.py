"""Numerical fidelity at full size (issue 22, item 4).

The same random full-size weights (``tools/full_size_model.py``, bf16 on disk, float32
here) go into transformers' ``GraniteSpeechCTCEncoder`` + ``GraniteSpeechEncoderProjector``
(the reference: each clip alone, unpadded) and into vLLM's modules driven by the plugin's
packed encoder (``granite_speech_server.vllm_plugin.encoder.encode_audios``), for a 7.3 s clip, a 30 s
clip, and both in one pack. Compared on each clip's valid frames:

* the encoder's last hidden states;
* the mid-layer self-conditioning: the term ``out_mid(softmax(out(hidden)))`` added at layer
  ``num_layers // 2`` (forward hooks on ``out_mid``), and the CTC logits ``out`` gives there;
* the projected audio embeddings, and their row counts: the plugin's ==
  ``audio_token_count(samples)`` == what transformers' projector makes of the clip;
* the CTC head beside vLLM (``CtcHead.load(checkpoint, dtype=torch.float32)``): its log
  posteriors against the CTC log-softmax of ``encoder.out`` over the plugin's hidden
  states, each clip encoded alone and both in one pack.

Relative difference: max |ours - reference| / max |reference| (elementwise, over all of a
clip's values); for the CTC head, the largest relative difference of any one posterior
probability, max |p_ours / p_reference - 1| (``posterior_relative``). Each at most
``TOLERANCE`` (1e-4). Measured here: hidden <= 9.5e-7, mid-layer term <= 1.7e-6 (its
logits <= 1.3e-6), embeddings <= 6.0e-7, CTC posteriors <= 3.8e-6; the same clip alone and
in the pack gave the same numbers. Checked by hand that it fails when something is wrong:
vLLM's stock padded batch (``projector(encoder(padded))``) for the pack moves the 7.3 s
clip's embeddings by 3.4e-1, its hidden states and mid-layer term by 1.2e-1, its CTC
posteriors by 3.0e-1; one encoder matrix scaled by 1.001 before vLLM's post-load step (layer 4's
``ff1.up_proj``) gives 1.5e-4 to 2.5e-4 everywhere and 6.4e-4 on the CTC posteriors.

vLLM's CPU linear layers pack their weights in ``process_weights_after_loading`` and drop
``.weight``, as in the engine: what runs here is that packed path.

A 7.3 s and a 30 s clip do not share a pack by default (``PACK_FRAMES`` is 1500 encoder
frames, the 30 s clip alone fills one), so the packed run raises ``PACK_FRAMES`` to hold
both and checks that they went through one encoder pass.

vLLM's modules run in a spawned process (their parallel layers need vLLM's distributed
state), which exits before transformers' copies are loaded here, one at a time: at most
one float32 encoder (~1.8 GB) is alive at once; peak RSS 3.2 GB in each process (VmHWM,
with the checkpoint already written). Run time on this 2-core CPU: 106 s (155 CPU s), split
about evenly between the vLLM side, transformers' reference and the CTC head; 4.5-6 min
when the machine was shared with other full-size runs.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from loadtest.servers import peak_rss_gib
from granite_speech_server.asr.ctc import checkpoint_weights

TOLERANCE = 1e-4
SAMPLE_RATE = 16000
CLIPS = {"7.3 s": (7.3, 1), "30 s": (30.0, 2)}
"""Name -> (seconds, seed)."""
RUNS = {"7.3 s alone": ["7.3 s"], "30 s alone": ["30 s"], "together": ["7.3 s", "30 s"]}
"""Each of the plugin's encoder runs -> the clips it packs."""


def speechlike(seconds: float, seed: int) -> np.ndarray:
    """A seeded, speech-shaped 16 kHz signal: a harmonic voice with a wandering pitch,
    syllable-rate loudness and pauses, through two formant-like resonances, with breath
    noise and a faint noise floor."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    f0 = 130 + 35 * np.sin(2 * np.pi * 0.4 * t + rng.uniform(0, 2 * np.pi)) \
        + 10 * np.sin(2 * np.pi * 2.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voice = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 30))
    # Two resonances sweeping like formants: a crude FIR of modulated cosines.
    taps = np.arange(64) / SAMPLE_RATE
    shaped = np.zeros(n)
    for centre in (500 + 200 * rng.standard_normal(), 1500 + 400 * rng.standard_normal()):
        kernel = np.cos(2 * np.pi * centre * taps) * np.exp(-taps * 400)
        shaped += np.convolve(voice, kernel, mode="same")
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 2 * np.pi)), 0, None)
    words = np.repeat(rng.random(int(seconds * 2) + 1) > 0.2, SAMPLE_RATE // 2)[:n]
    words = np.pad(words, (0, n - len(words))).astype(float)
    gate = np.convolve(words, np.ones(800) / 800, mode="same") * syllables
    breath = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same")
    audio = gate * (shaped + 0.3 * breath) + 0.003 * rng.standard_normal(n)
    return (0.8 * audio / np.abs(audio).max()).astype(np.float32)


def relative(ours: np.ndarray, reference: np.ndarray) -> float:
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def posterior_relative(ours: np.ndarray, reference: np.ndarray) -> float:
    """The largest relative difference of any one posterior probability,
    max |p_ours / p_reference - 1|, from log posteriors. (Over max |log p| it would hide
    a lot: log posteriors sit near -log(348) = -5.85 with random weights.)"""
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return float(np.abs(np.expm1(ours.astype(np.float64) - reference)).max())


def _plugin_side(checkpoint: str, audios: dict[str, np.ndarray]) -> dict:
    """vLLM's encoder and projector (float32) loaded from the checkpoint as vLLM loads
    them, run by the plugin's packed encoder: per run and clip, the hidden states, the
    mid-layer terms and logits, the embeddings and the CTC log-softmax, as numpy."""
    from torch import nn
    from transformers import AutoConfig
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.model_executor.models.granite_speech import (
        GraniteSpeechCTCEncoder,
        GraniteSpeechEncoderProjector,
    )
    from vllm.model_executor.models.utils import AutoWeightsLoader

    import granite_speech_server.vllm_plugin.encoder as plugin
    from granite_speech_server.audio.features import audio_token_count, log_mel_features

    root = Path(checkpoint)
    config = AutoConfig.from_pretrained(root)
    with set_current_vllm_config(VllmConfig()):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method="tcp://127.0.0.1:0")
        initialize_model_parallel(1, 1)
        model = nn.Module()  # the two as children under vLLM's names for the loader
        model.encoder = GraniteSpeechCTCEncoder(config.encoder_config, prefix="encoder")
        model.projector = GraniteSpeechEncoderProjector(config, None, prefix="projector")
    model.eval()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # vLLM's own loader over the checkpoint's encoder.* and projector.* tensors: it raises
    # on a name it cannot place; every parameter and stored buffer must be among those
    # it loaded.
    weights = (item for prefix in ("encoder.", "projector.")
               for item in ((prefix + name, tensor)
                            for name, tensor in checkpoint_weights(root, prefix)))
    loaded = AutoWeightsLoader(model).load_weights(weights)
    unloaded = sorted(set(model.state_dict()) - loaded)
    assert not unloaded, f"vLLM's modules kept {len(unloaded)} initial tensors: {unloaded[:5]}"
    for module in model.modules():  # as vLLM's model loader does after loading
        if getattr(module, "quant_method", None) is not None:
            module.quant_method.process_weights_after_loading(module)
    model.requires_grad_(False)
    encoder, projector = model.encoder, model.projector

    features = {name: log_mel_features(audio) for name, audio in audios.items()}
    passes: list[tuple[torch.Tensor, torch.Tensor]] = []  # (valid, hidden) per pass
    real_forward = plugin._encoder_forward

    def recording_forward(encoder, hidden, valid, blocks):
        out = real_forward(encoder, hidden, valid, blocks)
        passes.append((valid[0].clone(), out[0].clone()))
        return out

    mid_terms: list[torch.Tensor] = []
    mid_logits: list[torch.Tensor] = []
    # vLLM's out / out_mid are parallel linear layers: they return (output, bias).
    hooks = [encoder.out_mid.register_forward_hook(
                 lambda module, args, output: mid_terms.append(output[0][0].clone())),
             encoder.out.register_forward_hook(
                 lambda module, args, output: mid_logits.append(output[0][0].clone()))]
    plugin._encoder_forward = recording_forward
    results: dict = {}
    try:
        for run, names in RUNS.items():
            lengths = [features[name].shape[0] for name in names]
            # The 30 s clip fills a default pack: make room for both in one.
            plugin.PACK_FRAMES = max(plugin.PACK_FRAMES, sum(lengths))
            before = len(passes)
            embeds = plugin.encode_audios(
                encoder, projector, [features[name] for name in names],
                [audio_token_count(len(audios[name])) for name in names])
            assert len(passes) == before + 1 == len(mid_terms) == len(mid_logits), \
                f"{run}: {len(passes) - before} encoder passes, expected one pack"
            valid, hidden = passes[-1]
            assert int(valid.sum()) == sum(lengths), (run, int(valid.sum()), lengths)
            per_clip = zip(names, embeds,
                           hidden[valid].split(lengths), mid_terms[-1][valid].split(lengths),
                           mid_logits[-1][valid].split(lengths))
            results[run] = {name: {"embeddings": embed, "hidden": clip_hidden,
                                   "mid_term": term, "mid_logits": logits}
                            for name, embed, clip_hidden, term, logits in per_clip}
    finally:
        plugin._encoder_forward = real_forward
        for hook in hooks:
            hook.remove()
    with torch.inference_mode():
        for clips in results.values():
            for clip in clips.values():
                logits, _ = encoder.out(clip["hidden"])
                clip["ctc_log_probs"] = torch.log_softmax(logits, dim=-1)
    return {"runs": {run: {name: {key: value.numpy() for key, value in clip.items()}
                           for name, clip in clips.items()}
                     for run, clips in results.items()},
            "peak_rss_gb": peak_rss_gib(os.getpid())}


def _reference_side(checkpoint: Path, audios: dict[str, np.ndarray]) -> dict:
    """transformers' encoder and projector (float32), each clip alone."""
    from transformers import GraniteSpeechConfig
    from transformers.models.granite_speech.modeling_granite_speech import (
        GraniteSpeechCTCEncoder,
        GraniteSpeechEncoderProjector,
    )

    from granite_speech_server.audio.features import log_mel_features

    config = GraniteSpeechConfig.from_pretrained(checkpoint)
    encoder = GraniteSpeechCTCEncoder(config.encoder_config).eval()
    projector = GraniteSpeechEncoderProjector(config).eval()
    for prefix, module in (("encoder.", encoder), ("projector.", projector)):
        targets = module.state_dict(keep_vars=True)
        loaded = set()
        with torch.no_grad():
            for name, tensor in checkpoint_weights(checkpoint, prefix):
                assert name in targets, f"{prefix}{name} is not in transformers' module"
                assert targets[name].shape == tensor.shape, name
                targets[name].copy_(tensor)  # bf16 -> float32 (the parameter's dtype)
                loaded.add(name)
        unloaded = sorted(set(targets) - loaded)
        assert not unloaded, f"transformers' {prefix} kept initial tensors: {unloaded[:5]}"
        assert {p.dtype for p in module.parameters()} == {torch.float32}

    captured: dict[str, torch.Tensor] = {}
    hooks = [encoder.out_mid.register_forward_hook(
                 lambda module, args, output: captured.__setitem__("mid_term", output[0])),
             encoder.out.register_forward_hook(
                 lambda module, args, output: captured.__setitem__("mid_logits", output[0]))]
    results = {}
    with torch.inference_mode():
        for name, audio in audios.items():
            captured.clear()
            hidden = encoder(log_mel_features(audio)[None]).last_hidden_state
            results[name] = {"hidden": hidden[0], **captured,
                             "embeddings": projector(hidden)[0]}
    for hook in hooks:
        hook.remove()
    del encoder, projector
    gc.collect()
    return {name: {key: value.numpy() for key, value in clip.items()}
            for name, clip in results.items()}


@pytest.fixture(scope="module")
def audios() -> dict[str, np.ndarray]:
    return {name: speechlike(seconds, seed) for name, (seconds, seed) in CLIPS.items()}


@pytest.fixture(scope="module")
def encoded(full_size_model: Path, audios: dict[str, np.ndarray]) -> dict:
    """Both sides' outputs, computed one side at a time (never two float32 encoders at
    once), and the CTC head's log posteriors."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        plugin = pool.apply(_plugin_side, (str(full_size_model), audios))
    reference = _reference_side(full_size_model, audios)

    from granite_speech_server.asr.ctc import CtcHead

    head = CtcHead.load(str(full_size_model), dtype=torch.float32, device="cpu")
    assert {p.dtype for p in head.encoder.parameters()} == {torch.float32}
    # One call with both clips: the head runs each length apart (it has no packing), so
    # this is what it gives each clip alone too.
    ctc = dict(zip(audios, head.log_posteriors(list(audios.values()))))
    del head
    gc.collect()
    peak = {"vllm process": plugin["peak_rss_gb"], "test process": peak_rss_gib(os.getpid())}
    print(f"\npeak RSS (GB): {peak}")
    return {"plugin": plugin["runs"], "reference": reference, "ctc_head": ctc,
            "peak_rss_gb": peak}


def test_full_size_checkpoint_has_the_real_encoder_shape(full_size_model):
    config = json.loads((full_size_model / "config.json").read_text())
    encoder = config["encoder_config"]
    assert (encoder["num_layers"], encoder["hidden_dim"], encoder["output_dim"]) == \
        (16, 1024, 348)
    assert config["projector_config"]["num_hidden_layers"] == 2


@pytest.mark.parametrize("run", list(RUNS))
def test_plugin_matches_transformers(encoded, audios, run):
    from granite_speech_server.audio.features import audio_token_count

    diffs = {}
    for name, ours in encoded["plugin"][run].items():
        reference = encoded["reference"][name]
        tokens = audio_token_count(len(audios[name]))
        assert ours["embeddings"].shape[0] == tokens == reference["embeddings"].shape[0], \
            (name, ours["embeddings"].shape, tokens, reference["embeddings"].shape)
        assert ours["hidden"].shape[0] == reference["hidden"].shape[0]
        for key in ("hidden", "mid_term", "mid_logits", "embeddings"):
            diffs[f"{name} {key}"] = relative(ours[key], reference[key])
    print(f"{run}: " + ", ".join(f"{key} {value:.2e}" for key, value in diffs.items()))
    assert max(diffs.values()) <= TOLERANCE, diffs


@pytest.mark.parametrize("run", list(RUNS))
def test_ctc_head_beside_vllm_matches_the_plugins_encoder(encoded, run):
    diffs = {}
    for name, ours in encoded["plugin"][run].items():
        diffs[name] = posterior_relative(encoded["ctc_head"][name], ours["ctc_log_probs"])
    print(f"{run}: CTC head " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) <= TOLERANCE, diffs
