#!/usr/bin/env python
"""Train the tiny Granite speech test model on the synthesized digit corpus (CPU, seeded).

The model is the real `GraniteSpeechForConditionalGeneration` built by `tools/tiny_model.py`;
it learns to transcribe English digit sequences, translate them to French/German/Spanish digit
words, answer silence/noise with an immediate EOS, and its encoder's CTC head (`encoder.out`)
emits characters with MODEL.md's label scheme (0 blank, Latin-1 `chr(i)` -> i).

Stages
------
A. CTC pre-training of the encoder alone: CTC loss of `encoder.out` over the last layer plus
   0.3 x the same head over the middle layer (the self-conditioning point) against the
   transcript's characters. SpecAugment-style masks; batches padded with each utterance's
   silence floor, with zeros, or with extra zeros (vLLM zero-pads batched features).
B. The encoder is frozen (its CTC head stays exactly as trained in A). Its outputs for every
   training clip are computed once and cached; the projector and the LLM then train on the
   chat-formatted task (LM loss on " " + text + eos, exactly the server's prompt), plus an
   auxiliary digit-level CTC loss on the projector's 10 Hz outputs (a throw-away linear head,
   not saved) that makes every audio token say which digit it holds. Digit-count curriculum.
   The last window of a clip is filled like vLLM fills it: with zeros (one request) or with the
   encoder's outputs for zero-padded frames (batched requests).

Logs every stage's learning curve to a CSV (``--log``, default docs/test-model-training.csv)
and writes the checkpoint with `tiny_model.save_checkpoint` (vLLM weight names).

    python tools/speech_corpus.py build --split train
    python tools/speech_corpus.py build --split heldout
    python tools/train_tiny_model.py --recipe     # phases A1, A2, B -> tests/fixtures/...

Single phases take the options below (``--help``); ``--recipe`` runs the exact phases that made
the committed checkpoint and merges their curves into ``--log`` (+ a PNG next to it).
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: with the cores shared (other jobs on this machine), OpenMP's
# default busy-waiting made 2-thread steps up to 6x slower than 1 thread; passive waiting fixes it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import csv
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tools"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import speech_corpus as sc  # noqa: E402
import tiny_model as tm  # noqa: E402
from granite_speech_server.asr.prompt import (  # noqa: E402
    AUDIO_PLACEHOLDER,
    TRANSCRIBE_INSTRUCTION,
    keyword_suffix,
    render_prompt,
    translate_instruction,
)
from granite_speech_server.audio.features import audio_token_count  # noqa: E402

TASKS = ("en", "fr", "de", "es")  # "en" = transcription
WORK = ROOT / ".cache" / "train"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- text helpers

def ctc_labels(text: str) -> list[int]:
    """MODEL.md label scheme: 0 blank, Latin-1 chr(i) -> i (katakana unused here)."""
    return [ord(c) for c in text if 0 < ord(c) < 256]


def alignment_targets(meta: dict, n_frames: int) -> torch.Tensor:
    """Frame labels for a CTC-compatible path from the known word timing (50 Hz frames).

    Each word's characters sit at the centres of equal slots across the word's frames, the
    space between two words at the middle of the gap; every other frame is blank (0). Frames
    are -100 (ignored) when the timing is unknown (clips synthesized in one piece).
    """
    y = torch.zeros(n_frames, dtype=torch.long)
    words = meta["words"]
    if meta["kind"] != "speech":
        return y
    if not words:
        return torch.full((n_frames,), -100, dtype=torch.long)
    spans = []
    for w, start, end in words:
        s = min(n_frames - 1, int(start * 50))
        e = max(s + 1, min(n_frames, int(math.ceil(end * 50))))
        spans.append((w, s, e))
    for k, (w, s, e) in enumerate(spans):
        n = len(w)
        for j, c in enumerate(w):
            y[min(e - 1, s + int((j + 0.5) * (e - s) / n))] = ord(c)
        if k + 1 < len(spans):
            g = (e + spans[k + 1][1]) // 2
            if 0 <= g < n_frames and y[g] == 0:
                y[g] = ord(" ")
    return y


def dense_digit_targets(meta: dict, n_frames: int) -> torch.Tensor:
    """Per-frame label: 1 + digit of the word covering the frame, 0 outside words, -100 unknown."""
    if meta["kind"] != "speech":
        return torch.zeros(n_frames, dtype=torch.long)
    if not meta["words"]:
        return torch.full((n_frames,), -100, dtype=torch.long)
    y = torch.zeros(n_frames, dtype=torch.long)
    for w, start, end in meta["words"]:
        y[int(start * 50): int(math.ceil(end * 50))] = sc.DIGITS.index(w) + 1
    return y


def ctc_greedy_text(logits: torch.Tensor) -> str:
    ids = logits.argmax(-1).tolist()
    out, prev = [], 0
    for i in ids:
        if i != prev and i != 0:
            out.append(chr(i) if i < 256 else "?")
        prev = i
    return "".join(out)


def wer(refs: list[str], hyps: list[str]) -> float:
    return sc.word_error_rate(refs, hyps)


def target_text(meta: dict, task: str) -> str:
    words = sc.DIGITS if task == "en" else sc.TRANSLATIONS[task]
    return " ".join(words[d] for d in meta["digits"])


# ----------------------------------------------------------------------------- data

class Split:
    """Cached features of one corpus split as float16 torch tensors."""

    def __init__(self, name: str):
        self.meta, feats, _ = sc.load_split(name)
        self.feats = torch.from_numpy(np.array(feats))
        self.lengths = np.array([m["n_frames"] for m in self.meta])
        self.ndigits = np.array([len(m["digits"]) for m in self.meta])

    def features(self, i: int) -> torch.Tensor:
        m = self.meta[i]
        return self.feats[m["offset"]: m["offset"] + m["n_frames"]].float()

    def __len__(self) -> int:
        return len(self.meta)


def length_batches(rng: random.Random, indices: list[int], lengths, batch: int,
                   group: int = 16) -> list[list[int]]:
    """Batches of similar length: shuffle, sort within groups of `group` batches, shuffle."""
    idx = list(indices)
    rng.shuffle(idx)
    out = []
    for g in range(0, len(idx), batch * group):
        chunk = sorted(idx[g: g + batch * group], key=lambda i: lengths[i])
        out += [chunk[k: k + batch] for k in range(0, len(chunk), batch)]
    rng.shuffle(out)
    return [b for b in out if len(b) == batch]


def batch_stream(rng: random.Random, pick, lengths, batch: int):
    """Endless batches; `pick()` gives the eligible indices (may change over time)."""
    while True:
        for b in length_batches(rng, pick(), lengths, batch):
            yield b


def spec_augment(x: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Two time masks (<= 6 frames) and two mel-band masks (<= 8 of 80 bands) per clip."""
    x = x.clone()
    floor = x.min()
    t = x.shape[0]
    for _ in range(2):
        w = rng.randint(0, 6)
        if t > w + 1 and w:
            s = rng.randint(0, t - w - 1)
            x[s: s + w] = floor
    for _ in range(2):
        w = rng.randint(0, 8)
        if w:
            s = rng.randint(0, 80 - w)
            x[:, s: s + w] = floor
            x[:, 80 + s: 80 + s + w] = floor
    return x


def pad_features(feats: list[torch.Tensor], mode: str, extra: int = 0) -> torch.Tensor:
    """(B, T, 160): 'floor' pads each clip with its own minimum, 'zero' with zeros."""
    t = max(f.shape[0] for f in feats) + extra
    out = torch.zeros(len(feats), t, feats[0].shape[1])
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
        if mode == "floor":
            out[i, f.shape[0]:] = f.min()
    return out


# ----------------------------------------------------------------------------- model pieces

def encoder_forward(enc, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GraniteSpeechCTCEncoder.forward, also returning the middle layer's CTC logits."""
    h = enc.input_linear(x)
    mid = None
    for idx, layer in enumerate(enc.layers, start=1):
        h = layer(h, attention_dists=enc.attention_dists)
        if idx == enc.num_layers // 2:
            mid = enc.out(h)
            h = h + enc.out_mid(torch.softmax(mid, dim=-1))
    return h, mid


def projector_windows(proj, windows: torch.Tensor) -> torch.Tensor:
    """(N, window, D) encoder windows -> (N, queries, text hidden): the projector per window."""
    q = proj.qformer(query_embeds=proj.query, encoder_hidden_states=windows,
                     encoder_attention_mask=None, return_dict=True).last_hidden_state
    return proj.linear(q)


class PromptBank:
    """Token ids around the audio placeholder for every instruction, cached."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.audio_id = tokenizer.convert_tokens_to_ids(AUDIO_PLACEHOLDER)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id
        self._cache: dict[str, tuple[list[int], list[int]]] = {}
        self._targets: dict[str, list[int]] = {}

    def split(self, instruction: str) -> tuple[list[int], list[int]]:
        if instruction not in self._cache:
            ids = render_prompt(self.tok, instruction)
            assert ids.count(self.audio_id) == 1
            a = ids.index(self.audio_id)
            self._cache[instruction] = (ids[:a], ids[a + 1:])
        return self._cache[instruction]

    def target(self, text: str) -> list[int]:
        if text not in self._targets:
            ids = self.tok.encode(" " + text, add_special_tokens=False) if text else []
            self._targets[text] = ids + [self.eos]
        return self._targets[text]


def instruction_for(task: str, keywords: list[str] = ()) -> str:
    base = TRANSCRIBE_INSTRUCTION if task == "en" else translate_instruction(task)
    return base + keyword_suffix(keywords)


def llm_batch(model, bank: PromptBank, audio_embeds: list[torch.Tensor], instructions: list[str],
              targets: list[list[int]] | None):
    """inputs_embeds (B, L, H), attention mask, labels (or None), prompt lengths."""
    emb = model.model.language_model.get_input_embeddings()
    seqs, labels, prompt_lens = [], [], []
    for i, (a, instr) in enumerate(zip(audio_embeds, instructions)):
        pre, post = bank.split(instr)
        tgt = targets[i] if targets is not None else []
        ids_pre = torch.tensor(pre)
        ids_post = torch.tensor(post + tgt)
        seq = torch.cat([emb(ids_pre), a, emb(ids_post)])
        seqs.append(seq)
        plen = len(pre) + a.shape[0] + len(post)
        prompt_lens.append(plen)
        if targets is not None:
            lab = torch.full((seq.shape[0],), -100, dtype=torch.long)
            lab[plen - 1: plen - 1 + len(tgt)] = torch.tensor(tgt)  # position p predicts p+1
            labels.append(lab)
    L = max(s.shape[0] for s in seqs)
    H = seqs[0].shape[1]
    x = torch.zeros(len(seqs), L, H, dtype=seqs[0].dtype)
    mask = torch.zeros(len(seqs), L, dtype=torch.long)
    lab_t = torch.full((len(seqs), L), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
        if targets is not None:
            lab_t[i, : s.shape[0]] = labels[i]
    return x, mask, (lab_t if targets is not None else None), prompt_lens


def llm_logits(model, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = model.model.language_model(inputs_embeds=x, attention_mask=mask, use_cache=False)
    return model.lm_head(out.last_hidden_state)


@torch.no_grad()
def greedy_decode(model, bank: PromptBank, audio_embeds, instructions, max_new: int = 12,
                  chunk: int = 64) -> list[str]:
    """Batched greedy decoding (recomputes the sequence each step; fine for tiny models)."""
    emb = model.model.language_model.get_input_embeddings()
    texts = []
    for c in range(0, len(audio_embeds), chunk):
        a_emb = audio_embeds[c: c + chunk]
        instr = instructions[c: c + chunk]
        x, mask, _, plens = llm_batch(model, bank, a_emb, instr, None)
        gen = [[] for _ in a_emb]
        done = [False] * len(a_emb)
        for _ in range(max_new):
            L = max(plens[i] + len(gen[i]) for i in range(len(gen)))
            xx = torch.zeros(len(gen), L, x.shape[2], dtype=x.dtype)
            mm = torch.zeros(len(gen), L, dtype=torch.long)
            for i in range(len(gen)):
                xx[i, : plens[i]] = x[i, : plens[i]]
                if gen[i]:
                    xx[i, plens[i]: plens[i] + len(gen[i])] = emb(torch.tensor(gen[i]))
                mm[i, : plens[i] + len(gen[i])] = 1
            logits = llm_logits(model, xx, mm)
            for i in range(len(gen)):
                if done[i]:
                    continue
                nxt = int(logits[i, plens[i] + len(gen[i]) - 1].argmax())
                if nxt == bank.eos:
                    done[i] = True
                else:
                    gen[i].append(nxt)
            if all(done):
                break
        texts += [bank.tok.decode(g, skip_special_tokens=True).strip() for g in gen]
    return texts


# ----------------------------------------------------------------------------- curves

class Curve:
    FIELDS = ["stage", "step", "elapsed_s", "lr", "loss", "ctc", "ctc_mid", "align_ce", "dense_ce", "lm", "aux_ctc",
              "ctc_wer", "ctc_empty", "wer_en", "wer_fr", "wer_de", "wer_es", "empty_rate",
              "max_digits", "note"]

    def __init__(self, path: Path, t0: float):
        self.path = path
        self.t0 = t0
        self.rows: list[dict] = []

    def add(self, **row) -> None:
        row.setdefault("elapsed_s", round(time.time() - self.t0, 1))
        self.rows.append({k: row.get(k, "") for k in self.FIELDS})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as fh:
            w = csv.DictWriter(fh, self.FIELDS)
            w.writeheader()
            w.writerows(self.rows)


def fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.05) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


# ----------------------------------------------------------------------------- stage A

@torch.no_grad()
def eval_ctc(model, held: Split, limit: int = 240) -> tuple[float, float]:
    enc = model.model.encoder
    enc.eval()
    refs, hyps, empty_ok, n_empty = [], [], 0, 0
    for i in range(min(limit, len(held))):
        x = held.features(i)[None]
        h, _ = encoder_forward(enc, x)
        text = ctc_greedy_text(enc.out(h)[0])
        if held.meta[i]["kind"] == "speech":
            refs.append(held.meta[i]["text"])
            hyps.append(text)
        else:
            n_empty += 1
            empty_ok += not text.strip()
    return wer(refs, hyps), empty_ok / max(1, n_empty)


def stage_a(model, train: Split, held: Split, args, curve: Curve) -> None:
    enc = model.model.encoder
    rng = random.Random(args.seed + 10)
    for m in enc.modules():
        if isinstance(m, nn.Dropout):
            m.p = args.enc_dropout
    params = list(enc.input_linear.parameters()) + list(enc.layers.parameters()) + \
        list(enc.out.parameters()) + list(enc.out_mid.parameters())
    # throw-away head: which digit word (if any) covers each frame (dense, learns fast)
    dense_head = nn.Linear(enc.out.in_features, 11)
    params_all = params + list(dense_head.parameters())
    opt = torch.optim.AdamW(params_all, lr=args.lr_a, weight_decay=0.01, betas=(0.9, 0.98))
    schedule = parse_schedule(args.curriculum_a)
    state = {"max_digits": None}
    stream = None

    def eligible():
        return [i for i in range(len(train)) if train.ndigits[i] <= state["max_digits"]]

    t_last = time.time()
    acc = {"loss": 0.0, "ctc": 0.0, "ctc_mid": 0.0, "ce": 0.0, "dce": 0.0, "n": 0}
    for step in range(args.steps_a):
        md = [m for s, m in schedule if s <= step][-1]
        if md != state["max_digits"]:
            state["max_digits"] = md
            stream = batch_stream(rng, eligible, train.lengths, args.batch_a)
        enc.train()
        lr = cosine_lr(step, args.steps_a, args.lr_a, args.warmup_a)
        for g in opt.param_groups:
            g["lr"] = lr
        b = next(stream)
        augment = step >= args.aug_from_a
        feats = [spec_augment(train.features(i), rng) if augment else train.features(i) for i in b]
        r = rng.random() if augment else 0.0
        mode, extra = ("floor", 0) if r < 0.5 else ("zero", 0) if r < 0.8 else ("zero", rng.randint(10, 150))
        x = pad_features(feats, mode, extra)
        h, mid = encoder_forward(enc, x)
        lp = F.log_softmax(enc.out(h), -1).transpose(0, 1)
        lp_mid = F.log_softmax(mid, -1).transpose(0, 1)
        tg = [ctc_labels(train.meta[i]["text"]) for i in b]
        targets = torch.tensor([c for t in tg for c in t], dtype=torch.long)
        tlen = torch.tensor([len(t) for t in tg])
        ilen = torch.tensor([f.shape[0] for f in feats])
        ctc = F.ctc_loss(lp, targets, ilen, tlen, blank=0, zero_infinity=True)
        ctc_mid = F.ctc_loss(lp_mid, targets, ilen, tlen, blank=0, zero_infinity=True)
        # frame-level cross-entropy towards a CTC path laid out from the known word timing
        ali = torch.full(x.shape[:2], -100, dtype=torch.long)
        dense = torch.full(x.shape[:2], -100, dtype=torch.long)
        for j, i in enumerate(b):
            ali[j, : feats[j].shape[0]] = alignment_targets(train.meta[i], feats[j].shape[0])
            dense[j, : feats[j].shape[0]] = dense_digit_targets(train.meta[i], feats[j].shape[0])
        ce = F.cross_entropy(lp.transpose(0, 1).reshape(-1, lp.shape[-1]), ali.reshape(-1),
                             ignore_index=-100)
        dce = F.cross_entropy(dense_head(h).reshape(-1, 11), dense.reshape(-1), ignore_index=-100)
        loss = ctc + 0.3 * ctc_mid + args.ce_a * ce + args.dense_a * dce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params_all, 1.0)
        opt.step()
        acc["loss"] += loss.item(); acc["ctc"] += ctc.item(); acc["ctc_mid"] += ctc_mid.item()
        acc["ce"] += ce.item(); acc["dce"] += dce.item(); acc["n"] += 1
        last = step + 1 == args.steps_a
        if (step + 1) % args.log_every == 0 or last:
            n = acc["n"]
            row = dict(stage="A", step=step + 1, lr=f"{lr:.2e}", loss=round(acc["loss"] / n, 4),
                       ctc=round(acc["ctc"] / n, 4), ctc_mid=round(acc["ctc_mid"] / n, 4),
                       align_ce=round(acc["ce"] / n, 4), dense_ce=round(acc["dce"] / n, 4), max_digits=md)
            if (step + 1) % args.eval_every_a == 0 or last:
                row["ctc_wer"], row["ctc_empty"] = (round(v, 4) for v in eval_ctc(model, held))
            curve.add(**row)
            log(f"A {step + 1}/{args.steps_a} " + " ".join(f"{k}={fmt(v)}" for k, v in row.items()
                if k not in ('stage', 'step')) + f" ({(time.time() - t_last) / args.log_every:.2f}s/step)")
            t_last = time.time()
            acc = {"loss": 0.0, "ctc": 0.0, "ctc_mid": 0.0, "ce": 0.0, "dce": 0.0, "n": 0}


# ----------------------------------------------------------------------------- stage B

@torch.no_grad()
def cache_encoder_outputs(model, split: Split, rng: random.Random, batch: int = 32,
                          zero_share: float = 0.5, pad_bank_max: int = 4000):
    """Frozen-encoder outputs per clip (float16), plus encoder outputs of zero padding."""
    enc = model.model.encoder
    enc.eval()
    outs: list[torch.Tensor | None] = [None] * len(split)
    pad_bank: list[torch.Tensor] = []
    order = sorted(range(len(split)), key=lambda i: split.lengths[i])
    batches = [order[k: k + batch] for k in range(0, len(order), batch)]
    t0 = time.time()
    for k, b in enumerate(batches):
        feats = [split.features(i) for i in b]
        if rng.random() < zero_share:
            x = pad_features(feats, "zero", rng.randint(0, 60))
        else:
            x = pad_features(feats, "floor", 0)
        h, _ = encoder_forward(enc, x)
        for j, i in enumerate(b):
            t = feats[j].shape[0]
            outs[i] = h[j, :t].to(torch.float16).clone()
            if x.shape[1] - t >= 14 and len(pad_bank) < pad_bank_max and rng.random() < 0.3:
                pad_bank.append(h[j, t:].to(torch.float16).clone())
        if (k + 1) % 100 == 0:
            log(f"  encoder outputs: {k + 1}/{len(batches)} batches ({time.time() - t0:.0f}s)")
    return outs, pad_bank


def audio_embeddings(model, enc_outs: list[torch.Tensor], n_samples: list[int],
                     fill: list[torch.Tensor | None]):
    """Projector outputs per clip, exactly as many as the server reserves audio tokens for."""
    proj = model.model.projector
    W = proj.window_size
    windows, counts = [], []
    dtype = proj.linear.weight.dtype
    for e, n, f in zip(enc_outs, n_samples, fill):
        e = e.to(dtype)
        t = e.shape[0]
        nb = math.ceil(t / W)
        pad = nb * W - t
        if pad:
            filler = torch.zeros(pad, e.shape[1], dtype=dtype) if f is None else f[:pad].to(dtype)
            if filler.shape[0] < pad:
                filler = torch.cat([filler, torch.zeros(pad - filler.shape[0], e.shape[1], dtype=dtype)])
            e = torch.cat([e, filler])
        windows.append(e.view(nb, W, -1))
        counts.append(nb)
        assert nb * (W // proj.downsample_rate) == audio_token_count(n), (t, n)
    y = projector_windows(proj, torch.cat(windows))  # (sum nb, q, H)
    out, k = [], 0
    for nb in counts:
        out.append(y[k: k + nb].reshape(-1, y.shape[-1]))
        k += nb
    return out


KEYWORD_POOL = sc.DIGITS + ["alpha", "granite", "IBM", "vLLM", "Kubernetes", "Zurich", "Anna"]


def sample_task(rng: random.Random) -> tuple[str, list[str]]:
    r = rng.random()
    task = "en" if r < 0.4 else "fr" if r < 0.6 else "de" if r < 0.8 else "es"
    kws = []
    if rng.random() < 0.1:
        kws = rng.sample(KEYWORD_POOL, rng.randint(1, 3))
    return task, kws


@torch.no_grad()
def eval_llm(model, bank: PromptBank, held: Split, held_enc, n_speech: int = 200,
             n_tr: int = 60) -> dict:
    model.eval()
    speech = [i for i in range(len(held)) if held.meta[i]["kind"] == "speech"][:n_speech]
    empty = [i for i in range(len(held)) if held.meta[i]["kind"] != "speech"]
    res = {}
    jobs = [("en", speech)] + [(t, speech[:n_tr]) for t in ("fr", "de", "es")]
    for task, idx in jobs:
        a = audio_embeddings(model, [held_enc[i] for i in idx], [held.meta[i]["n_samples"] for i in idx],
                             [None] * len(idx))
        hyps = greedy_decode(model, bank, a, [instruction_for(task)] * len(idx))
        res[f"wer_{task}"] = round(wer([target_text(held.meta[i], task) for i in idx], hyps), 4)
    ok = 0
    for task in TASKS:
        a = audio_embeddings(model, [held_enc[i] for i in empty], [held.meta[i]["n_samples"] for i in empty],
                             [None] * len(empty))
        hyps = greedy_decode(model, bank, a, [instruction_for(task)] * len(empty))
        ok += sum(1 for h in hyps if not h.strip())
    res["empty_rate"] = round(ok / max(1, 4 * len(empty)), 4)
    return res


def parse_schedule(spec: str) -> list[tuple[int, int]]:
    """"0:1,400:3,1000:8" -> [(0, 1), (400, 3), (1000, 8)] (step: max digits)."""
    return [tuple(int(v) for v in part.split(":")) for part in spec.split(",")]


def stage_b(model, bank: PromptBank, train: Split, held: Split, args, curve: Curve) -> None:
    rng = random.Random(args.seed + 20)
    t0 = time.time()
    enc_cache = args.enc_cache or WORK / f"enc_outputs_{args.out.name}.pt"
    if args.enc_cache and enc_cache.exists():
        train_enc, pad_bank, held_enc = torch.load(enc_cache)
        log(f"B: loaded cached encoder outputs {enc_cache}")
    else:
        train_enc, pad_bank = cache_encoder_outputs(model, train, random.Random(args.seed + 21))
        # held-out: one clip at a time, exactly like a single server request
        held_enc = []
        enc = model.model.encoder
        with torch.no_grad():
            for i in range(len(held)):
                h, _ = encoder_forward(enc, held.features(i)[None])
                held_enc.append(h[0].to(torch.float16))
        WORK.mkdir(parents=True, exist_ok=True)
        torch.save((train_enc, pad_bank, held_enc), enc_cache)
    log(f"B: encoder outputs ready ({time.time() - t0:.0f}s, pad bank {len(pad_bank)})")
    curve.add(stage="B", step=0, note=f"encoder outputs cached in {time.time() - t0:.0f}s")

    for p in model.model.encoder.parameters():
        p.requires_grad_(False)
    proj = model.model.projector
    llm = model.model.language_model
    n_digits_out = 11
    aux_head = nn.Linear(proj.linear.out_features, n_digits_out)
    groups = [
        {"params": list(proj.parameters()) + list(aux_head.parameters()), "lr": args.lr_b, "name": "proj"},
        {"params": list(llm.parameters()), "lr": args.lr_b, "name": "llm"},
    ]
    opt = torch.optim.AdamW(groups, lr=args.lr_b, weight_decay=0.01, betas=(0.9, 0.98))
    schedule = parse_schedule(args.curriculum)
    speech_idx = np.array([i for i in range(len(train)) if train.meta[i]["kind"] == "speech"])
    empty_idx = [i for i in range(len(train)) if train.meta[i]["kind"] != "speech"]
    state = {"max_digits": schedule[0][1]}

    def eligible():
        sel = speech_idx[train.ndigits[speech_idx] <= state["max_digits"]].tolist()
        # keep about 1 empty clip per 10 speech clips
        n_e = max(1, len(sel) // 10)
        return sel + (empty_idx * (1 + n_e // len(empty_idx)))[:n_e]

    stream = None
    acc = {"loss": 0.0, "lm": 0.0, "aux_ctc": 0.0, "n": 0}
    t_last = time.time()
    best = None
    for step in range(args.steps_b):
        md = [m for s, m in schedule if s <= step][-1]
        if md != state["max_digits"] or stream is None:
            state["max_digits"] = md
            stream = batch_stream(rng, eligible, train.lengths, args.batch_b)
        model.train()
        lr = cosine_lr(step, args.steps_b, args.lr_b, args.warmup_b)
        for g in opt.param_groups:
            g["lr"] = lr * (args.proj_lr_mult if g["name"] == "proj" else 1.0)
        b = next(stream)
        fill = [None if rng.random() < 0.6 or not pad_bank else pad_bank[rng.randrange(len(pad_bank))]
                for _ in b]
        a = audio_embeddings(model, [train_enc[i] for i in b], [train.meta[i]["n_samples"] for i in b], fill)
        instrs, targets = [], []
        for i in b:
            task, kws = sample_task(rng)
            instrs.append(instruction_for(task, kws))
            targets.append(bank.target(target_text(train.meta[i], task)))
        x, mask, labels, _ = llm_batch(model, bank, a, instrs, targets)
        logits = llm_logits(model, x, mask)
        lm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        # auxiliary digit CTC over the audio tokens (10 Hz)
        pad_seq = torch.nn.utils.rnn.pad_sequence(a, batch_first=True)
        lp = F.log_softmax(aux_head(pad_seq), -1).transpose(0, 1)
        tg = [[d + 1 for d in train.meta[i]["digits"]] for i in b]
        aux = F.ctc_loss(lp, torch.tensor([d for t in tg for d in t], dtype=torch.long),
                         torch.tensor([e.shape[0] for e in a]), torch.tensor([len(t) for t in tg]),
                         blank=0, zero_infinity=True)
        w_aux = args.aux_weight * max(0.0, 1 - step / max(1, args.aux_until)) if args.aux_until else args.aux_weight
        loss = lm + w_aux * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        acc["loss"] += loss.item(); acc["lm"] += lm.item(); acc["aux_ctc"] += aux.item(); acc["n"] += 1
        last = step + 1 == args.steps_b
        if (step + 1) % args.log_every == 0 or last:
            n = acc["n"]
            row = dict(stage="B", step=step + 1, lr=f"{lr:.2e}", loss=round(acc["loss"] / n, 4),
                       lm=round(acc["lm"] / n, 4), aux_ctc=round(acc["aux_ctc"] / n, 4), max_digits=md)
            if (step + 1) % args.eval_every_b == 0 or last:
                row.update(eval_llm(model, bank, held, held_enc))
                score = row["wer_en"] + row["wer_fr"] + row["wer_de"] + row["wer_es"] + (1 - row["empty_rate"])
                if best is None or score < best:
                    best = score
                    torch.save(model.state_dict(), args.best_b)
            curve.add(**row)
            log(f"B {step + 1}/{args.steps_b} " + " ".join(f"{k}={fmt(v)}" for k, v in row.items()
                if k not in ('stage', 'step')) + f" ({(time.time() - t_last) / args.log_every:.2f}s/step)")
            t_last = time.time()
            acc = {"loss": 0.0, "lm": 0.0, "aux_ctc": 0.0, "n": 0}


# ----------------------------------------------------------------------------- plots

def plot_curves(csv_path: Path, png_path: Path) -> None:
    """Learning curves of a (merged) training CSV as one PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(csv_path)))
    num = lambda r, k: float(r[k]) if r.get(k) not in (None, "") else None  # noqa: E731
    a = [r for r in rows if r["stage"].startswith("A")]
    b = [r for r in rows if r["stage"].startswith("B")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    xs = [num(r, "global_step") for r in a]
    for k in ("ctc", "ctc_mid", "dense_ce", "align_ce"):
        ax.plot(xs, [num(r, k) for r in a], label=k)
    ax.set_yscale("log"); ax.set_xlabel("stage A step"); ax.set_title("A: encoder losses"); ax.legend()
    ax2 = ax.twinx()
    ev = [r for r in a if r.get("ctc_wer")]
    ax2.plot([num(r, "global_step") for r in ev], [num(r, "ctc_wer") for r in ev], "k--o", ms=3,
             label="held-out CTC WER")
    ax2.set_ylim(0, 1.05); ax2.legend(loc="center right")
    ax = axes[1]
    xs = [num(r, "step") for r in b if num(r, "step")]
    for k in ("lm", "aux_ctc"):
        ax.plot(xs, [num(r, k) for r in b if num(r, "step")], label=k)
    ax.set_yscale("log"); ax.set_xlabel("stage B step"); ax.set_title("B: projector + LLM losses")
    ax.legend()
    ax = axes[2]
    ev = [r for r in b if r.get("wer_en")]
    for k in ("wer_en", "wer_fr", "wer_de", "wer_es"):
        ax.plot([num(r, "step") for r in ev], [num(r, k) for r in ev], "-o", ms=3, label=k)
    ax.axhline(0.05, color="gray", ls=":"); ax.axhline(0.10, color="gray", ls="--")
    ax.set_ylim(0, 1); ax.set_xlabel("stage B step"); ax.set_title("B: held-out WER (in-process)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)


# ----------------------------------------------------------------------------- recipe

# The exact phases that produced tests/fixtures/tiny-granite-speech (docs/test-model.md).
# A1 ran before the blank-bias initialisation existed (hence --blank-bias 0); A2 is a warm
# restart of stage A's cosine schedule, added after A1's CTC loss was still falling at its end.
RECIPE = [
    ("A1", ["--blank-bias", "0", "--steps-a", "500", "--steps-b", "0",
            "--save-a", str(WORK / "stage_a1.pt")]),
    ("A2", ["--init", str(WORK / "stage_a1.pt"), "--steps-a", "600", "--lr-a", "1e-3",
            "--warmup-a", "30", "--curriculum-a", "0:8", "--aug-from-a", "0", "--steps-b", "0",
            "--save-a", str(WORK / "stage_a2.pt")]),
    ("B", ["--init", str(WORK / "stage_a2.pt"), "--steps-a", "0", "--steps-b", "3500",
           "--eval-every-b", "500", "--curriculum", "0:1,250:3,700:5,1200:8",
           "--enc-cache", str(WORK / "enc_a2.pt")]),
]


def merge_curves(parts: list[tuple[str, Path]], out: Path) -> None:
    """Concatenate per-phase CSVs into one, with the phase name and a global stage-A step."""
    rows, offset_a = [], 0
    for phase, path in parts:
        last = 0
        for r in csv.DictReader(open(path)):
            r = {"phase": phase, **r}
            step = int(r["step"] or 0)
            r["global_step"] = offset_a + step if r["stage"] == "A" else step
            last = max(last, step) if r["stage"] == "A" else last
            rows.append(r)
        offset_a += last
    fields = ["phase", "global_step"] + Curve.FIELDS
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fields)
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in fields} for r in rows)


def run_recipe(out: Path, log_csv: Path, extra: list[str]) -> int:
    parts = []
    stale = WORK / "enc_a2.pt"  # stage B's encoder-output cache belongs to the old encoder
    if stale.exists():
        stale.unlink()
    for phase, argv in RECIPE:
        phase_csv = WORK / f"curve_{phase}.csv"
        target = out if phase == RECIPE[-1][0] else WORK / f"ckpt_{phase}"
        log(f"=== phase {phase}: {' '.join(argv)}")
        main(argv + ["--out", str(target), "--log", str(phase_csv)] + extra)
        parts.append((phase, phase_csv))
    merge_curves(parts, log_csv)
    try:
        plot_curves(log_csv, log_csv.with_suffix(".png"))
    except ImportError:
        log("matplotlib missing: no plot")
    return 0


# ----------------------------------------------------------------------------- main

def _strip_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in names:
            skip = True
            continue
        if any(a.startswith(n + "=") for n in names):
            continue
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "tiny-granite-speech")
    p.add_argument("--log", type=Path, default=ROOT / "docs" / "test-model-training.csv")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps-a", type=int, default=600)
    p.add_argument("--batch-a", type=int, default=32)
    p.add_argument("--lr-a", type=float, default=1e-3)
    p.add_argument("--warmup-a", type=int, default=100)
    p.add_argument("--curriculum-a", default="0:3,200:8", help="step:max digits, ...")
    p.add_argument("--aug-from-a", type=int, default=150, help="SpecAugment/zero padding from this step")
    p.add_argument("--ce-a", type=float, default=0.5, help="weight of the alignment CE loss")
    p.add_argument("--dense-a", type=float, default=1.0, help="weight of the dense digit CE loss")
    p.add_argument("--enc-dropout", type=float, default=0.0)
    p.add_argument("--eval-every-a", type=int, default=50)
    p.add_argument("--steps-b", type=int, default=3000)
    p.add_argument("--batch-b", type=int, default=48)
    p.add_argument("--lr-b", type=float, default=2e-3)
    p.add_argument("--proj-lr-mult", type=float, default=1.0)
    p.add_argument("--warmup-b", type=int, default=100)
    p.add_argument("--aux-weight", type=float, default=0.5)
    p.add_argument("--aux-until", type=int, default=0, help="linearly decay the aux loss to 0 by this step")
    p.add_argument("--curriculum", default="0:1,300:3,900:8")
    p.add_argument("--eval-every-b", type=int, default=250)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--init", type=Path, help="start from this state_dict (.pt) (use --steps-a 0 to skip A)")
    p.add_argument("--blank-bias", type=float, default=4.0, help="initial CTC blank logit bias")
    p.add_argument("--enc-cache", type=Path,
                   help="stage-B encoder-output cache: loaded if it exists, else computed and saved "
                        "(only valid for the same encoder weights and corpus)")
    p.add_argument("--init-encoder-only", action="store_true",
                   help="with --init: load only the encoder's weights (e.g. another LLM size)")
    p.add_argument("--llm-layers", type=int, help="override tiny_model's LLM layer count")
    p.add_argument("--save-a", type=Path, default=WORK / "stage_a.pt")
    p.add_argument("--recipe", action="store_true",
                   help="run the documented phases A1, A2, B in sequence (writes --out, --log "
                        "and its .png); other options are passed to every phase")
    args, _ = p.parse_known_args(argv)
    if args.recipe:
        extra = [a for a in (argv if argv is not None else sys.argv[1:])
                 if a not in ("--recipe",)]
        extra = _strip_options(extra, ("--out", "--log"))
        return run_recipe(args.out, args.log, extra)
    args = p.parse_args(argv)
    args.best_b = WORK / f"best_b_{args.out.name}.pt"
    if args.best_b.exists():
        args.best_b.unlink()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    t0 = time.time()
    curve = Curve(args.log, t0)

    if args.llm_layers:
        tm.TEXT_KWARGS["num_hidden_layers"] = args.llm_layers
    tokenizer = tm.build_tokenizer()
    config = tm.build_config(tokenizer)
    model = tm.build_model(config, seed=args.seed)
    log(f"model: {tm.count_parameters(model):,} parameters; vocab {len(tokenizer)}")
    bank = PromptBank(tokenizer)
    assert sc.TRANSLATIONS == {k: v for k, v in tm.DIGIT_WORDS.items() if k != "en"}

    train = Split("train")
    held = Split("heldout")
    log(f"corpus: train {len(train)} clips ({train.lengths.sum() / 50 / 3600:.2f} h), heldout {len(held)}")

    if args.init:
        state = torch.load(args.init)
        if args.init_encoder_only:
            state = {k: v for k, v in state.items() if k.startswith("model.encoder.")}
        missing, unexpected = model.load_state_dict(state, strict=not args.init_encoder_only)
        log(f"loaded {args.init} ({len(state)} tensors)")
    else:
        with torch.no_grad():  # CTC head starts out predicting blank (skips the all-blank phase)
            model.model.encoder.out.bias[0] += args.blank_bias
    if args.steps_a:
        stage_a(model, train, held, args, curve)
        WORK.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.save_a)
    if args.steps_b:
        stage_b(model, bank, train, held, args, curve)
        if args.best_b.exists():
            model.load_state_dict(torch.load(args.best_b))
            log(f"kept the best stage-B evaluation: {args.best_b}")
    model.eval()
    tm.save_checkpoint(model, tokenizer, args.out)
    log(f"saved {args.out} ({tm.dir_size(args.out) / 1e6:.1f} MB) in {time.time() - t0:.0f}s total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
