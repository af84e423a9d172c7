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

The modules and weights are vLLM's; this replaces only their ``forward`` plumbing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

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
        hidden = _block_forward(layer, hidden, encoder.attention_dists, valid)
        if index == encoder.num_layers // 2:  # the CTC head's mid-network feedback
            mid, _ = encoder.out(hidden)
            mid, _ = encoder.out_mid(encoder.softmax(mid))
            hidden = hidden + mid
    return hidden


def _block_forward(layer: nn.Module, hidden: torch.Tensor, dists: torch.Tensor,
                   valid: torch.Tensor) -> torch.Tensor:
    hidden = 0.5 * layer.ff1(hidden) + hidden
    hidden = _block_attention(layer.attn, hidden, dists, valid) + hidden
    hidden = _conv_forward(layer.conv, hidden, valid) + hidden
    hidden = 0.5 * layer.ff2(hidden) + hidden
    return layer.post_norm(hidden)


def _conv_forward(conv: nn.Module, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    hidden = conv.norm(hidden)
    hidden = conv.glu(conv.up_conv(hidden.permute(0, 2, 1)))
    # The depthwise kernel reaches past the end of an audio: zeros there.
    hidden = hidden.masked_fill(~valid[:, None, :], 0)
    hidden = conv.silu(conv.batch_norm(conv.depth_conv(hidden)))
    return conv.down_conv(hidden).permute(0, 2, 1)


def _block_attention(attn: nn.Module, hidden: torch.Tensor, dists: torch.Tensor,
                    valid: torch.Tensor) -> torch.Tensor:
    """vLLM's attention within blocks of ``context_size`` frames, with Shaw relative
    positions, where no frame attends to padding (vLLM masks only the padding it adds
    to the last block)."""
    hidden = attn.pre_norm(hidden)
    batch, frames, _ = hidden.shape
    size = attn.context_size
    blocks = -(-frames // size)
    hidden = F.pad(hidden, (0, 0, 0, blocks * size - frames))
    key_valid = F.pad(valid, (0, blocks * size - frames)).view(batch, blocks, 1, 1, size)
    # A block of padding alone attends to all of it: its output is never used, and with
    # every key masked its softmax would be NaN.
    attendable = key_valid | ~key_valid.any(dim=-1, keepdim=True)

    def split(states: torch.Tensor) -> torch.Tensor:
        return states.reshape(batch, blocks, size, attn.num_heads, -1).transpose(2, 3)

    query = split(attn.to_q(hidden))
    key, value = (split(states) for states in attn.to_kv(hidden).chunk(2, dim=-1))
    rel_pos_emb = attn.rel_pos_emb(dists.to(query.device))
    position_bias = torch.einsum("bnhid,ijd->bnhij", query, rel_pos_emb) * attn.scale
    position_bias = position_bias.masked_fill(~attendable, float("-inf"))
    with sdpa_kernel(SDPBackend.MATH):  # as vLLM's: the same numerics
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=position_bias,
                                             scale=attn.scale)
    out = out.transpose(2, 3).reshape(batch, blocks * size, -1)
    return attn.to_out(out[:, :frames])
