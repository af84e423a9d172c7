"""Granite's conformer encoder, each audio's result independent of its batch.

vLLM's network pads every audio of an engine step to the longest and encodes the
batch at once. The encoder has no padding mask, so a short clip's last attention
block and last projector window see the padding: its embeddings change with what it
happened to be batched with (by 4% of their norm for a 2 s clip beside a 20 s one).

Here audios of similar length are batched, padded to a multiple of
``LENGTH_QUANTUM`` frames, and the padding is kept out of every step that would mix
it in: attention never takes it as a key, the depthwise convolution and the
projector see zeros there, as they do past the end of an audio encoded alone. The
rest of the network works frame by frame. Each audio gets the embeddings it would
get alone, unpadded. (Rounding lengths up also means few distinct tensor shapes:
on the CPU, a shape oneDNN has not seen costs its kernels' set-up.)

It is also about twice as fast on the CPU as vLLM's forward (tiny model, bfloat16, one
thread: 7.9 against 17.5 ms for a 0.5 s clip, 69 against 121 ms for 30 s): the last
attention block is attended at its own length instead of a whole 4 s one, Shaw's
relative positions take one matrix product instead of a query-by-query contraction
over a gathered table, and the pointwise convolutions run as matrix products.

The modules and weights are vLLM's; this replaces only their ``forward`` plumbing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LENGTH_QUANTUM = 50
"""Encoder frames (1 s) that padded lengths are multiples of: at most 1 s of padding
per audio, and few distinct shapes."""


def encode_audios(encoder: nn.Module, projector: nn.Module, features: Sequence[torch.Tensor],
                  embed_sizes: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """Each audio's (embed_size, hidden) embeddings from its (frames, 160) features.
    Audios whose lengths round up to the same multiple of ``LENGTH_QUANTUM`` are
    encoded as one batch."""
    batches: dict[int, list[int]] = {}
    for index, feature in enumerate(features):
        padded = -(-feature.shape[0] // LENGTH_QUANTUM) * LENGTH_QUANTUM
        batches.setdefault(padded, []).append(index)
    embeds: list[torch.Tensor] = [torch.empty(0)] * len(features)
    dtype = encoder.input_linear.weight.dtype
    for padded, indices in batches.items():
        batch = torch.stack([F.pad(features[i], (0, 0, 0, padded - len(features[i])))
                             for i in indices]).to(dtype)
        lengths = torch.tensor([features[i].shape[0] for i in indices], device=batch.device)
        valid = torch.arange(padded, device=batch.device) < lengths[:, None]  # (batch, frames)
        hidden = _encoder_forward(encoder, batch, valid)
        # The projector's last window of each audio: zeros past its end.
        projected = projector(hidden.masked_fill(~valid[..., None], 0))
        for row, index in enumerate(indices):
            embeds[index] = projected[row, : embed_sizes[index]]
    return tuple(embeds)


def _encoder_forward(encoder: nn.Module, hidden: torch.Tensor,
                     valid: torch.Tensor) -> torch.Tensor:
    """``GraniteSpeechCTCEncoder.forward``, the padding (``~valid``) masked."""
    hidden = encoder.input_linear(hidden)
    for index, layer in enumerate(encoder.layers, start=1):
        hidden = _block_forward(layer, hidden, valid)
        if index == encoder.num_layers // 2:  # the CTC head's mid-network feedback
            mid, _ = encoder.out(hidden)
            mid, _ = encoder.out_mid(encoder.softmax(mid))
            hidden = hidden + mid
    return hidden


def _block_forward(layer: nn.Module, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    hidden = 0.5 * layer.ff1(hidden) + hidden
    hidden = _block_attention(layer.attn, hidden, valid) + hidden
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


def _block_attention(attn: nn.Module, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """vLLM's attention within blocks of ``context_size`` frames, with Shaw relative
    positions, where no frame attends to padding (vLLM masks only the padding it adds
    to the last block). The last block is attended at its own length, not padded to a
    whole one: most speech segments are shorter than one block (4 s)."""
    hidden = attn.pre_norm(hidden)
    query = attn.to_q(hidden)
    key, value = attn.to_kv(hidden).chunk(2, dim=-1)
    frames = hidden.shape[1]
    whole = frames // attn.context_size * attn.context_size
    out = [_attend_in_blocks(attn, query[:, lo:hi], key[:, lo:hi], value[:, lo:hi],
                             valid[:, lo:hi], min(attn.context_size, hi - lo))
           for lo, hi in ((0, whole), (whole, frames)) if hi > lo]
    return attn.to_out(torch.cat(out, dim=1) if len(out) > 1 else out[0])


def _attend_in_blocks(attn: nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, valid: torch.Tensor, size: int) -> torch.Tensor:
    """Attention within consecutive blocks of ``size`` frames (``size`` divides the
    frames)."""
    batch, frames, _ = query.shape
    blocks = frames // size

    def split(states: torch.Tensor) -> torch.Tensor:
        return states.reshape(batch, blocks, size, attn.num_heads, -1).transpose(2, 3)

    query, key, value = split(query), split(key), split(value)
    scores = (query @ key.transpose(-1, -2) + _relative_position_scores(attn, query)) * attn.scale
    key_valid = valid.view(batch, blocks, 1, 1, size)
    # A block of padding alone attends to all of it: its output is never used, and with
    # every key masked its softmax would be NaN.
    attendable = key_valid | ~key_valid.any(dim=-1, keepdim=True)
    weights = scores.masked_fill(~attendable, float("-inf")).softmax(dim=-1)
    out = (weights @ value).transpose(2, 3)
    return out.reshape(batch, frames, -1)


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
