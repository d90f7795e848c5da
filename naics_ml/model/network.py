"""NaicsModel: four text channels -> LoRA encoders -> MoE fusion -> Lorentz hyperboloid."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from naics_ml.model.base import load_base_model, load_tokenizer
from naics_ml.model.channels import CHANNELS, QUERY_CHANNEL
from naics_ml.model.config import ModelConfig
from naics_ml.model.encoder import ChannelEncoder
from naics_ml.model.fusion import MoEFusion
from naics_ml.model.lorentz import Lorentz
from naics_ml.model.loss import load_balance_loss
from naics_ml.model.negative_bank import NegativeBank
from naics_ml.model.prepared import CACHE_DTYPES, PreparedTexts, query_rows
from naics_ml.model.text_groups import group_mean

log = logging.getLogger(__name__)

# Free texts tokenized and sorted by token length together before the encoder's micro-batches
# (ChannelEncoder.max_tokens / max_rows): 512 rather than 64 pads 1.30x the real tokens instead
# of 1.46x on real firm descriptions, and encodes them ~20 % faster (docs/results.md).
TEXT_GROUP = 512


def use_all_cores() -> None:
    """``torch.set_num_threads(os.cpu_count())`` unless several processes share the machine."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        torch.set_num_threads(os.cpu_count() or 1)


@dataclass
class Encoded:
    points: Tensor  # (..., embedding_dim + 1) on the hyperboloid
    balance_loss: Tensor  # scalar, unweighted Switch loss (1.0 = balanced); caller applies λ
    expert_utilization: Tensor  # (num_experts,) share of routed slots per expert


class NaicsModel(nn.Module):
    """Codes and free-text queries embedded as points on the Lorentz hyperboloid.

    A code is its four channel texts (title, description, excluded, examples; missing ones
    masked). A channel in ``config.line_channels`` is read line by line: each line through the
    adapter, the slot vector is the lines' normalised mean. A query is free text routed through
    the examples channel's adapter with the other channels masked, then the same fusion and
    exponential map: queries live in the space of codes, and the examples channel is the centroid
    of query-like phrases (illustrative examples and index entries).

    Every tensor lives on the model's :attr:`device`: ``model.to(device)`` also moves the
    prepared texts (prefix cache, slots) and the negative bank, and each tensor made on the way
    is made there (tests run the model with the default device set to ``meta`` to prove it).
    """

    def __init__(
        self, config: ModelConfig, base: PreTrainedModel | None = None, tokenizer=None
    ) -> None:
        super().__init__()
        use_all_cores()
        if config.cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"cache_dtype must be one of {sorted(CACHE_DTYPES)}")
        unknown = set(config.line_channels) - set(CHANNELS)
        if unknown:
            raise ValueError(f"line_channels {sorted(unknown)} are not channels {list(CHANNELS)}")
        self.config = config
        self.manifold = Lorentz(config.curvature)  # the geometry, holding k once
        base = base if base is not None else load_base_model(config.base_model)
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.base_model)
        self.encoder = ChannelEncoder(base.eval(), tokenizer, CHANNELS, config)
        hidden = self.encoder.hidden_size
        self.fusion = MoEFusion(
            hidden=hidden,
            num_channels=len(CHANNELS),
            out_dim=config.embedding_dim,
            num_experts=config.num_experts,
            top_k=config.top_k,
            expert_hidden=config.expert_hidden,
            gate_noise=config.gate_noise,
        )
        self.prepared: PreparedTexts | None = None  # what prepare() made: texts, slots, prefix
        # every code's pooled channel vectors: filled, refreshed, saved and loaded by training
        # (naics_ml.training.bank); encode_codes reads it where it holds what it would compute
        self.bank = NegativeBank()

    @property
    def device(self) -> torch.device:
        return self.fusion.skip.weight.device

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> NaicsModel:
        """``to``/``cuda``/``cpu`` of the weights, then the prepared tensors follow them."""
        super()._apply(fn, recurse)
        if self.prepared is not None:
            self.prepared = self.prepared.to(self.device)
        self.bank.to(self.device)
        return self

    # --- preparation ------------------------------------------------------------------------
    def prepare(
        self,
        channel_texts: dict[str, list[str | None]],
        queries: Sequence[str] = (),
        cache_dir: Path | str | None = None,
    ) -> None:
        """Cache the frozen prefix of every distinct code channel text and query text.

        ``channel_texts[c][i]`` is code i's text for channel c (None = missing); a line channel's
        text is split into lines. Texts are deduplicated across channels, codes and queries: the
        prefix does not depend on the adapter. Call once before training or evaluation (again to
        change the texts). With ``cache_dir``, the prefix is stored there under a fingerprint of
        the frozen weights and the texts, and a later call with the same ones (the next stage)
        loads it instead of recomputing it (~1 min on 2 cores for the 2022 codes and queries).
        """
        self.bank.clear()
        self.prepared = None  # a failed call leaves no half-prepared model
        cache = (self.config.cache_dtype, cache_dir)
        self.prepared = PreparedTexts.build(
            channel_texts, queries, self.encoder, self.config.line_channels, cache, self.device
        )

    @property
    def num_codes(self) -> int:
        return 0 if self.prepared is None else self.prepared.num_codes

    @property
    def code_fingerprint(self) -> str | None:
        """``channel_fingerprint`` of the prepared codes (None before ``prepare``)."""
        return None if self.prepared is None else self.prepared.code_fingerprint

    def _require_prepared(self) -> PreparedTexts:
        if self.prepared is None:
            raise RuntimeError("call NaicsModel.prepare(...) before encoding prepared ids")
        return self.prepared

    # --- forward ----------------------------------------------------------------------------
    def forward(self, slots: Tensor, channels: Tensor | None = None) -> Encoded:
        """Prepared inputs to points: (U, C) rows of slot ids (-1 = missing) -> fused points
        (U, D+1) on the hyperboloid. ``channels`` (U, C, H), when given, are the rows' pooled
        channel vectors (the bank's), and the transformer top is not run."""
        channels = self.channel_vectors(slots) if channels is None else channels
        return self._fuse(channels, slots >= 0)

    # --- encoding -----------------------------------------------------------------------------
    def _fuse(self, channels: Tensor, mask: Tensor) -> Encoded:
        out = self.fusion(channels, mask)
        tangent = out.tangent
        cap = self.config.max_tangent_norm
        norm = tangent.norm(dim=-1, keepdim=True)
        tangent = tangent * (cap / norm.clamp_min(cap))  # binds only beyond the generous cap
        points = self.manifold.project(self.manifold.expmap0(tangent))
        util = out.dispatch.sum(0) / out.dispatch.sum().clamp_min(1.0)
        return Encoded(
            points=points,
            balance_loss=load_balance_loss(out.gate_probs, out.dispatch),
            expert_utilization=util.detach(),
        )

    def channel_vectors(self, slots: Tensor) -> Tensor:
        """(U, C) rows of slot ids (-1 = missing) -> pooled channel vectors (U, C, H), zeros
        where missing; each distinct text of a channel runs through the top layers once."""
        prepared = self._require_prepared()
        n, hidden = len(slots), self.encoder.hidden_size
        mask = slots >= 0
        columns = []
        for c, channel in enumerate(CHANNELS):
            rows = mask[:, c].nonzero().squeeze(1)
            column = torch.zeros(n, hidden, device=slots.device)
            if len(rows):
                distinct, inverse = torch.unique(slots[rows, c], return_inverse=True)
                members, owner = prepared.groups.gather(distinct)
                texts, text_inverse = torch.unique(members, return_inverse=True)
                pooled = self.encoder.encode_cached(prepared.cache, texts, channel)
                vectors = group_mean(pooled[text_inverse], owner, len(distinct))
                column = column.index_put((rows,), vectors[inverse])
            columns.append(column)
        return torch.stack(columns, 1)

    def _expand(self, enc: Encoded, inverse: Tensor, shape: torch.Size) -> Encoded:
        points = enc.points[inverse].reshape(*shape, enc.points.shape[-1])
        return Encoded(points, enc.balance_loss, enc.expert_utilization)

    def encode_codes(self, code_ids: Tensor, live: Tensor | Iterable[int] | None = None) -> Encoded:
        """Points for code indices of any shape; each distinct code is encoded once.

        With a filled bank (``naics_ml.training.bank.refresh_bank``) and ``live`` given, only
        the requested codes that are in ``live`` run through the transformer top (gradients
        reach their adapters, and their bank rows are overwritten with the detached result);
        the other codes' channel vectors come from the bank. The fusion runs on all codes
        either way. Without a bank or with ``live=None`` every code is encoded (the exact
        path), except that a current bank is read in eval mode without gradients.

        The balance loss and utilisation are over the distinct codes of the call.
        """
        prepared = self._require_prepared()
        distinct, inverse = torch.unique(code_ids.reshape(-1), return_inverse=True)
        slots = prepared.code_slots[distinct]
        if live is None and self._bank_equals_exact():  # the bank is what we would compute
            enc = self(slots, self.bank.rows[distinct])
        elif not self.bank.filled or live is None:
            enc = self(slots)
        else:
            live_ids = torch.as_tensor(
                live if isinstance(live, Tensor) else sorted(live),
                dtype=torch.long,
                device=distinct.device,
            )
            is_live = torch.isin(distinct, live_ids.reshape(-1))
            channels = self.bank.rows[distinct]  # a copy: bank rows of the non-live codes
            live_rows = is_live.nonzero().squeeze(1)
            if len(live_rows):
                fresh = self.channel_vectors(slots[live_rows])
                self.bank.overwrite(distinct[live_rows], fresh)
                channels = channels.index_put((live_rows,), fresh)
            enc = self(slots, channels)
        return self._expand(enc, inverse, code_ids.shape)

    def trainable_versions(self) -> tuple[int, ...]:
        """The trainable weights' in-place version counters: an optimizer step, ``copy_`` or
        ``load_state_dict`` bumps them, so the bank knows when it went stale."""
        return tuple(p._version for p in self.parameters() if p.requires_grad)

    def _bank_equals_exact(self) -> bool:
        """Whether the exact path may read the bank: a current bank, and a call that would
        compute the same thing (eval mode, as the refresh ran; no gradients wanted)."""
        current = self.bank.is_current(self.trainable_versions())
        return not self.training and not torch.is_grad_enabled() and current

    @contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Eval mode inside the block, the previous mode after it. A model already in eval mode
        is not walked again: ``nn.Module.train`` recurses through every submodule, ~2 ms a call
        with MiniLM, which one-text classification would otherwise pay four times."""
        was_training = self.training
        if was_training:
            self.eval()
        try:
            yield
        finally:
            if was_training:
                self.train()

    def encode_queries(self, query_ids: Tensor) -> Encoded:
        """Points for indices into the prepared ``queries`` (examples adapter, rest masked)."""
        prepared = self._require_prepared()
        distinct, inverse = torch.unique(query_ids.reshape(-1), return_inverse=True)
        enc = self(query_rows(prepared.query_slots[distinct]))
        return self._expand(enc, inverse, query_ids.shape)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = TEXT_GROUP) -> Tensor:
        """Points (n, D+1) for arbitrary free text (inference, eval mode).

        A text that was prepared (a code line or a training query) starts from its cached prefix,
        so embedding the training entries again costs only the top layers; any other text runs
        the whole transformer. Either way it goes through the examples adapter, rest masked.
        """
        (vectors,) = self._pooled_texts(list(texts), batch_size, (QUERY_CHANNEL,))
        return self._query_points(vectors)

    @torch.inference_mode()
    def encode_frozen(self, texts: Sequence[str], batch_size: int = TEXT_GROUP) -> Tensor:
        """Unit vectors (n, H) of the bare base model, every adapter bypassed: what it knew
        before training (the Classifier's base part). Prepared texts start from their cached
        prefix, as in :meth:`encode_texts`."""
        (vectors,) = self._pooled_texts(list(texts), batch_size, (None,))
        return vectors

    @torch.inference_mode()
    def encode_texts_and_frozen(
        self, texts: Sequence[str], batch_size: int = TEXT_GROUP
    ) -> tuple[Tensor, Tensor]:
        """:meth:`encode_texts` and :meth:`encode_frozen` of the same texts at once: the two
        share the frozen lower layers, so the pair costs a third less than two calls."""
        adapted, frozen = self._pooled_texts(list(texts), batch_size, (QUERY_CHANNEL, None))
        return self._query_points(adapted), frozen

    def _query_points(self, vectors: Tensor) -> Tensor:
        """Fuse pooled query vectors (examples channel only, rest masked) into points."""
        device = vectors.device
        if not len(vectors):
            return torch.zeros(0, self.config.embedding_dim + 1, device=device)
        with self.eval_mode():
            q = CHANNELS.index(QUERY_CHANNEL)
            mask = torch.zeros(len(vectors), len(CHANNELS), dtype=torch.bool, device=device)
            mask[:, q] = True
            out = []
            for start in range(0, len(vectors), 512):
                part = vectors[start : start + 512]
                shape = (len(part), len(CHANNELS), self.encoder.hidden_size)
                channels = torch.zeros(shape, device=device)
                channels[:, q] = part
                out.append(self._fuse(channels, mask[start : start + 512]).points)
            return torch.cat(out)

    def _pooled_texts(
        self, texts: list[str], batch_size: int, routes: Sequence[str | None]
    ) -> list[Tensor]:
        """Pooled (n, H) vectors per route (an adapter's channel, or None for the bare base;
        see ``ChannelEncoder.encode_uncached_routes``), in eval mode."""
        device = self.device
        with self.eval_mode():
            shape = (len(texts), self.encoder.hidden_size)
            vectors = [torch.empty(shape, device=device) for _ in routes]
            text_ids = {} if self.prepared is None else self.prepared.text_ids
            cached = [i for i, t in enumerate(texts) if t in text_ids]
            if cached:
                text_rows = [text_ids[texts[i]] for i in cached]
                ids = torch.tensor(text_rows, dtype=torch.long, device=device)
                for route, out in zip(routes, vectors, strict=True):
                    out[cached] = self._encode_cached_route(ids, route)
            fresh = sorted(
                (i for i, t in enumerate(texts) if t not in text_ids),
                key=lambda i: len(texts[i]),  # similar lengths batch together
            )
            for start in range(0, len(fresh), batch_size):
                rows = fresh[start : start + batch_size]
                batch = [texts[i] for i in rows]
                encoded = self.encoder.encode_uncached_routes(batch, routes)
                for out, part in zip(vectors, encoded, strict=True):
                    out[rows] = part
            return vectors

    def _encode_cached_route(self, ids: Tensor, route: str | None) -> Tensor:
        if route is None:
            with self.encoder.adapters_off():
                return self.encoder.encode_cached(self.prepared.cache, ids, QUERY_CHANNEL)
        return self.encoder.encode_cached(self.prepared.cache, ids, route)

    @torch.inference_mode()
    def encode_all_codes(self, batch_size: int = 512) -> Tensor:
        """Points (n_codes, D+1) of every prepared code, in eval mode."""
        with self.eval_mode():
            ids = torch.arange(self.num_codes, device=self.device)
            return torch.cat(
                [
                    self.encode_codes(ids[s : s + batch_size]).points
                    for s in range(0, len(ids), batch_size)
                ]
            )

    def encode_codes_reference(
        self, code_ids: Tensor, dedupe: bool = True, pad_to_max_length: bool = False
    ) -> Encoded:
        """The same function as :meth:`encode_codes` computed without any cache.

        Runs every channel text through the whole transformer. With ``dedupe=False,
        pad_to_max_length=True`` it is the naive design (every slot encoded separately, padded
        to ``max_length``) used as the speed baseline; tests use it to prove the cache exact.
        """
        prepared = self._require_prepared()
        flat = code_ids.reshape(-1)
        if dedupe:
            flat, inverse = torch.unique(flat, return_inverse=True)
        else:
            inverse = torch.arange(len(flat), device=flat.device)
        slots = prepared.code_slots[flat]
        mask = slots >= 0
        columns = []
        for c, channel in enumerate(CHANNELS):
            rows = mask[:, c].nonzero().squeeze(1)
            column = torch.zeros(len(flat), self.encoder.hidden_size, device=flat.device)
            if len(rows):
                members, owner = prepared.groups.gather(slots[rows, c])
                texts = [prepared.texts[i] for i in members.tolist()]
                pooled = self.encoder.encode_full(texts, channel, pad_to_max_length)
                column = column.index_put((rows,), group_mean(pooled, owner, len(rows)))
            columns.append(column)
        enc = self._fuse(torch.stack(columns, 1), mask)
        return self._expand(enc, inverse, code_ids.shape)

    # --- persistence --------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, Tensor]:
        """LoRA and fusion weights only (the frozen base comes from ``config.base_model``)."""
        state = self.state_dict()
        return {k: v.detach().clone() for k, v in state.items() if _is_trainable_key(k)}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        expected = {k for k in self.state_dict() if _is_trainable_key(k)}
        got = set(state)
        if got != expected:
            raise ValueError(
                f"trainable state mismatch: missing {sorted(expected - got)[:5]}, "
                f"unexpected {sorted(got - expected)[:5]}"
            )
        self.load_state_dict(state, strict=False)
        self.bank.clear()  # computed with the old adapters


def _is_trainable_key(key: str) -> bool:
    return key.startswith("fusion.") or "lora_" in key
