"""Granite's conformer encoder, each audio's result independent of its batch.

vLLM's network pads every audio of an engine step to the longest and encodes the
batch at once. The encoder has no padding mask, so a short clip's last attention
block and last projector window see the padding: its embeddings change with what it
happened to be batched with (by 4% of their norm for a 2 s clip beside a 20 s one).

Here an engine step's audios are packed end to end into one sequence, each in a slot
of its own: the slot starts on a projector window and leaves at least the depthwise
convolution's reach of zeros after the audio. Every frame-wise layer (the feed-forward
modules, the projections, the norms: most of the work) then runs once over the
packed frames, with no padding to the longest and one call per layer for each ~30 s
pack however many audios it holds (each call costs ~4 ms of set-up for the ~200
operators of the tiny network, so grouping audios by length cost a call per group).
What would mix audios is kept apart: attention runs within each audio's own blocks of
``context_size`` frames (gathered from the sequence, never taking another audio's
frame or a gap as a key), the convolution sees zeros in the gaps, as it does past
the end of an audio encoded alone, and the projector's windows never straddle two
audios. Each audio gets the embeddings it would get alone, unpadded.

It is also faster on the CPU than vLLM's forward: an audio's last attention block is
attended at its own length instead of a whole 4 s one, Shaw's relative positions take
one matrix product instead of a query-by-query contraction over a gathered table, and
the pointwise convolutions run as matrix products.

The modules and weights are vLLM's; this replaces only their ``forward`` plumbing.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_QUANTUM = 50
"""Attention blocks are batched by length rounded up to this many frames (1 s):
few distinct shapes, and a short audio's block is not padded to a whole 4 s one."""

PACK_FRAMES = 1500
"""Audios are packed into sequences of about this many frames (30 s; a longer audio
goes alone). Packs of 750 frames lost most of the gain over per-length batches; 3000
did no better than 1500 (tiny model, one thread, 0.8-8 s clips)."""


@torch.no_grad()
def encode_audios(encoder: nn.Module, projector: nn.Module, features: Sequence[torch.Tensor],
                  embed_sizes: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """Each audio's (embed_size, hidden) embeddings from its (frames, 160) features.

    Never recorded for autograd, whatever the caller's mode: vLLM's CPU worker profiles
    the model outside inference mode, and with autograd on every layer's activations
    were kept (1.7 GiB per 30 s of audio at full size; the worker was killed at 20 GB)."""
    embeds: list[torch.Tensor] = []
    for pack in _packs([feature.shape[0] for feature in features]):
        embeds += _encode_packed(encoder, projector, features[pack], embed_sizes[pack])
    return tuple(embeds)


def _packs(lengths: Sequence[int]) -> list[slice]:
    """Consecutive runs of audios of at most ``PACK_FRAMES`` frames together."""
    packs, start, total = [], 0, 0
    for index, length in enumerate(lengths):
        if index > start and total + length > PACK_FRAMES:
            packs.append(slice(start, index))
            start, total = index, 0
        total += length
    return [*packs, slice(start, len(lengths))] if lengths else packs


def _encode_packed(encoder: nn.Module, projector: nn.Module, features: Sequence[torch.Tensor],
                   embed_sizes: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """``encode_audios`` for audios packed into one sequence."""
    window = projector.window_size
    reach = max(encoder.layers[0].conv.depth_conv.padding)
    lengths = [feature.shape[0] for feature in features]
    slots = [-(-(length + reach) // window) * window for length in lengths]
    offsets = [0, *accumulate(slots)][:-1]
    packed = features[0].new_zeros(sum(slots), features[0].shape[-1],
                                   dtype=encoder.input_linear.weight.dtype)
    valid = torch.zeros(sum(slots), dtype=torch.bool, device=packed.device)
    for offset, length, feature in zip(offsets, lengths, features):
        packed[offset : offset + length] = feature
        valid[offset : offset + length] = True
    blocks = _attention_blocks(offsets, lengths, encoder.layers[0].attn.context_size,
                               packed.device)
    hidden = _encoder_forward(encoder, packed[None], valid[None], blocks)
    # The projector's last window of each audio: zeros past its end.
    projected = projector(hidden.masked_fill(~valid[None, :, None], 0))[0]
    tokens_per_window = window // projector.downsample_rate
    return tuple(projected[offset // window * tokens_per_window :][:size]
                 for offset, size in zip(offsets, embed_sizes))


AttentionBlocks = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""Where the audios' attention blocks lie in the packed sequence, batched by length: per
batch, a (blocks, length) index of frames, a mask of which are the block's, and the
sequence frames those are (where the batch's output goes). The same for every layer:
computed once per pack."""


def _attention_blocks(offsets: Sequence[int], lengths: Sequence[int], context: int,
                      device: torch.device) -> AttentionBlocks:
    by_size: dict[int, list[tuple[int, int]]] = {}
    for offset, length in zip(offsets, lengths):
        for start in range(0, length, context):
            size = min(context, length - start)
            padded = min(context, -(-size // BLOCK_QUANTUM) * BLOCK_QUANTUM)
            by_size.setdefault(padded, []).append((offset + start, size))
    batches = []
    for padded, blocks in by_size.items():
        steps = torch.arange(padded, device=device)
        starts = torch.tensor([start for start, _ in blocks], device=device)
        sizes = torch.tensor([size for _, size in blocks], device=device)
        inside = steps < sizes[:, None]
        # Past a block's end the index repeats its first frame: masked as a key, and
        # its query's output is dropped.
        index = starts[:, None] + steps * inside
        batches.append((index, inside, index[inside]))
    return batches


def _encoder_forward(encoder: nn.Module, hidden: torch.Tensor, valid: torch.Tensor,
                     blocks: AttentionBlocks) -> torch.Tensor:
    """``GraniteSpeechCTCEncoder.forward`` over packed audios (``valid`` their frames)."""
    hidden = encoder.input_linear(hidden)
    for index, layer in enumerate(encoder.layers, start=1):
        hidden = _block_forward(layer, hidden, valid, blocks)
        if index == encoder.num_layers // 2:  # the CTC head's mid-network feedback
            mid, _ = encoder.out(hidden)
            mid, _ = encoder.out_mid(encoder.softmax(mid))
            hidden = hidden + mid
    return hidden


def _block_forward(layer: nn.Module, hidden: torch.Tensor, valid: torch.Tensor,
                   blocks: AttentionBlocks) -> torch.Tensor:
    hidden = 0.5 * layer.ff1(hidden) + hidden
    hidden = _block_attention(layer.attn, hidden, blocks) + hidden
    hidden = _conv_forward(layer.conv, hidden, valid) + hidden
    hidden = 0.5 * layer.ff2(hidden) + hidden
    return layer.post_norm(hidden)


def _conv_forward(conv: nn.Module, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The conv module with its pointwise (kernel 1) convolutions as the matrix products
    they are, frames first: oneDNN's convolution costs several times as much here."""
    hidden = conv.norm(hidden)
    hidden = F.glu(F.linear(hidden, conv.up_conv.weight[..., 0], conv.up_conv.bias), dim=-1)
    # The depthwise kernel reaches past the end of an audio: zeros there.
    hidden = hidden.masked_fill(~valid[..., None], 0).transpose(1, 2)
    hidden = conv.silu(conv.batch_norm(conv.depth_conv(hidden))).transpose(1, 2)
    return F.linear(hidden, conv.down_conv.weight[..., 0], conv.down_conv.bias)


def _block_attention(attn: nn.Module, hidden: torch.Tensor,
                     blocks: AttentionBlocks) -> torch.Tensor:
    """vLLM's attention within blocks of ``context_size`` frames, with Shaw relative
    positions, each block gathered from the packed sequence and attending only to its
    own frames. A last block is attended at its own length, not padded to a whole one:
    most speech segments are shorter than one block (4 s). Frames in no block (the
    gaps between audios) get zeros."""
    hidden = attn.pre_norm(hidden)[0]
    query = attn.to_q(hidden)
    key, value = attn.to_kv(hidden).chunk(2, dim=-1)
    out = query.new_zeros(query.shape)
    for index, inside, frames in blocks:
        count, size = index.shape

        def gather(states: torch.Tensor) -> torch.Tensor:
            return states[index].reshape(count, size, attn.num_heads, -1).transpose(1, 2)

        block_query, block_key = gather(query), gather(key)
        scores = (block_query @ block_key.transpose(-1, -2)
                  + _relative_position_scores(attn, block_query)) * attn.scale
        weights = scores.masked_fill(~inside[:, None, None, :], float("-inf")).softmax(dim=-1)
        attended = (weights @ gather(value)).transpose(1, 2).reshape(count, size, -1)
        out[frames] = attended[inside]
    return attn.to_out(out)[None]


def _relative_position_scores(attn: nn.Module, query: torch.Tensor) -> torch.Tensor:
    """Shaw's term, query_i . rel_pos_emb[i - j], for (..., size, size) blocks of queries.

    vLLM gathers a (size, size, dim) embedding per call and contracts it query by query.
    Here the queries meet the 2 * size - 1 distances in one matrix product, with the
    distances in falling order, and the (i, j) scores are read in place: query i's for
    distances i, i - 1, ... i - size + 1 (j = 0 ... size - 1) lie next to each other,
    and query i + 1's start 2 * size - 2 further on."""
    size = query.shape[-2]
    centre = attn.max_pos_emb  # the embedding of distance 0
    table = attn.rel_pos_emb.weight[centre - size + 1 : centre + size].flip(0)
    by_distance = (query @ table.T.to(query.dtype)).contiguous()  # (..., size, 2 * size - 1)
    *lead, _, _ = by_distance.shape
    return by_distance.as_strided(
        (*lead, size, size), (*by_distance.stride()[:-2], 2 * size - 2, 1),
        by_distance.storage_offset() + size - 1)
