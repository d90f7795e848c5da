"""Texts grouped by length for the encoder: padded micro-batches, and BERT layers over packed
tokens (a batch's texts laid end to end, without padding).

:func:`length_buckets` makes micro-batches of similar length, each padded to its longest text.
Even so, padding wastes its share of every matrix product: 1.3x the real tokens for firm
descriptions. Packed, the linear layers (nearly all of the work) multiply the real tokens only,
in one large product per layer; only attention needs the texts apart. It runs on the same
micro-batches, padded there, through PyTorch's ``scaled_dot_product_attention`` with a key mask,
as transformers' own SDPA path does. The vectors are therefore the padded path's up to float
rounding (tested), and a batch of real firm descriptions runs about 1.25x faster through the
encoder (docs/results.md).

Only BERT-style layers (``BertLayer``: MiniLM, the default base) are run packed
(:func:`supports_packing`); MPNet, whose layers add a relative position bias, keeps the padded
path. Inference only: the prefix cache and training keep their padded micro-batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PackedTexts",
    "length_buckets",
    "pack_texts",
    "run_packed_layers",
    "split_into_packs",
    "supports_packing",
]

# Real tokens run through the layers at once: products large enough to run at full speed (4,096
# to 16,384 measured the same), and feed-forward activations of MiniLM under 32 MB even in
# float32, the largest block glibc's malloc keeps for reuse rather than mapping afresh.
PACK_TOKENS = 4096


@dataclass(frozen=True)
class AttentionGroup:
    """Texts that attend together: ``rows`` (n, width) is the packed token row of each
    position (a text's last token repeated past its end), ``mask`` (n, width) its real tokens."""

    rows: Tensor
    mask: Tensor


@dataclass(frozen=True)
class PackedTexts:
    """Token ids of texts, shortest first and end to end, with what attention and pooling need."""

    order: Tensor  # (n,) position of each packed text in the caller's list
    lengths: Tensor  # (n,) tokens per packed text
    input_ids: Tensor  # (1, T)
    position_ids: Tensor  # (1, T) position of each token inside its text
    text_of_token: Tensor  # (T,) packed text of each token
    groups: tuple[AttentionGroup, ...]

    def mean_pool(self, hidden: Tensor) -> Tensor:
        """(n, H) mean over each text's tokens of ``hidden`` (T, H), L2-normalised, in the
        caller's order (as :func:`naics_ml.model.encoder.mean_pool` of the padded path)."""
        sums = torch.zeros(
            (len(self.lengths), hidden.shape[1]), dtype=hidden.dtype, device=hidden.device
        )
        sums.index_add_(0, self.text_of_token, hidden)
        pooled = F.normalize(sums / self.lengths.unsqueeze(1).to(hidden.dtype), dim=-1)
        return pooled[torch.argsort(self.order)]


def length_buckets(lengths: Tensor, max_tokens: int, max_rows: int) -> list[Tensor]:
    """Positions grouped into micro-batches of similar length (each padded to its own max), on
    ``lengths``' device; the grouping itself reads the lengths once, on the CPU."""
    device = lengths.device
    lengths = lengths.cpu()
    order = torch.argsort(lengths, stable=True)
    buckets: list[Tensor] = []
    start = 0
    n = len(order)
    while start < n:
        end = start + 1
        while end < n and end - start < max_rows:
            longest = int(lengths[order[end]])
            if longest * (end - start + 1) > max_tokens:
                break
            end += 1
        buckets.append(order[start:end].to(device))
        start = end
    return buckets


def split_into_packs(
    token_ids: Sequence[Sequence[int]], limit: int = PACK_TOKENS
) -> list[list[int]]:
    """Positions of ``token_ids`` in packs of at most ``limit`` tokens (a longer text alone),
    shortest texts first, so that each pack holds texts of similar length."""
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    packs: list[list[int]] = []
    size = limit
    for i in order:
        if size + len(token_ids[i]) > limit:
            packs.append([])
            size = 0
        packs[-1].append(i)
        size += len(token_ids[i])
    return packs


def pack_texts(
    token_ids: Sequence[Sequence[int]], max_tokens: int, max_rows: int, device: torch.device
) -> PackedTexts:
    """Pack ``token_ids`` (non-empty lists) shortest first; attention groups as the padded
    path's micro-batches (at most ``max_tokens`` padded tokens and ``max_rows`` texts)."""
    cpu = torch.device("cpu")
    lengths = torch.tensor([len(ids) for ids in token_ids], dtype=torch.long, device=cpu)
    order = torch.argsort(lengths, stable=True)
    lengths = lengths[order]
    starts = torch.cumsum(lengths, 0) - lengths
    text_of_token = torch.repeat_interleave(torch.arange(len(lengths), device=cpu), lengths)
    flat = [token for i in order.tolist() for token in token_ids[i]]
    groups = []
    for bucket in length_buckets(lengths, max_tokens, max_rows):  # sorted: contiguous texts
        width = int(lengths[bucket].max())
        pos = torch.arange(width, device=cpu).unsqueeze(0)
        last = lengths[bucket].unsqueeze(1) - 1
        rows = starts[bucket].unsqueeze(1) + torch.minimum(pos, last)
        groups.append(AttentionGroup(rows.to(device), (pos <= last).to(device)))
    return PackedTexts(
        order=order.to(device),
        lengths=lengths.to(device),
        input_ids=torch.tensor([flat], dtype=torch.long, device=device),
        position_ids=(torch.arange(len(flat), device=cpu) - starts[text_of_token])
        .unsqueeze(0)
        .to(device),
        text_of_token=text_of_token.to(device),
        groups=tuple(groups),
    )


def supports_packing(layers: nn.ModuleList) -> bool:
    """Whether every layer is an encoder-only ``BertLayer``, as :func:`run_packed_layers` needs."""
    from transformers.models.bert.modeling_bert import BertLayer

    return all(isinstance(layer, BertLayer) and not layer.is_decoder for layer in layers)


def run_packed_layers(layers: Sequence[nn.Module], hidden: Tensor, packed: PackedTexts) -> Tensor:
    """``hidden`` (T, H) through BERT ``layers``, each as its own forward would (no dropout:
    the encoder's frozen base has none and this runs in eval mode)."""
    for layer in layers:
        attention = layer.attention.self
        heads = (len(hidden), attention.num_attention_heads, attention.attention_head_size)
        query, key, value = (
            projection(hidden).view(heads)
            for projection in (attention.query, attention.key, attention.value)
        )
        context = _grouped_attention(query, key, value, packed, attention.scaling)
        hidden = layer.attention.output(context.flatten(1), hidden)
        hidden = layer.output(layer.intermediate(hidden), hidden)
    return hidden


def _grouped_attention(
    query: Tensor, key: Tensor, value: Tensor, packed: PackedTexts, scaling: float
) -> Tensor:
    """(T, heads, head size) attention of each text over its own tokens, group by group."""
    parts = []
    for group in packed.groups:
        q, k, v = (x[group.rows].transpose(1, 2) for x in (query, key, value))
        keys = group.mask[:, None, None, :]
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, scale=scaling)
        parts.append(context.transpose(1, 2)[group.mask])
    return torch.cat(parts)
