"""One frozen transformer shared by several channels, each with its own LoRA adapter.

Speed comes from three exact (not approximate) tricks:

* LoRA only on the top ``lora_layers`` layers, so the hidden states entering the first LoRA
  layer depend on frozen weights only. :class:`PrefixCache` computes them once per distinct
  text (fp16 by default, real tokens only) and training steps run just the top layers.
* Length-bucketed micro-batches: sequences are sorted by length and padded only to the
  longest in their micro-batch. Free texts (``encode_uncached_routes``) go further on BERT
  layers: packed end to end with no padding at all, attention alone per micro-batch
  (``naics_ml.model.packed``).
* Channels share one base and switch adapters, so the base weights exist once in memory.

Everything runs on the base's device (``ChannelEncoder.device``); the prefix cache is built and
saved on the CPU and moved to that device by ``NaicsModel``. Token ids are padded on the CPU and
moved once per batch. Layer-by-layer execution also handles MPNet (all-mpnet-base-v2), whose
layers take the encoder's relative position bias and return tuples.

The base's own dropout is switched off (it is frozen and its prefix is cached, so the top
layers must behave as in the cached forward); LoRA dropout is kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask

from naics_ml.model.config import ModelConfig
from naics_ml.model.packed import (
    PACK_TOKENS,
    length_buckets,
    pack_texts,
    run_packed_layers,
    split_into_packs,
    supports_packing,
)
from naics_ml.model.precision import autocast_layers
from naics_ml.model.prefix_cache import PrefixCache

log = logging.getLogger(__name__)


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens, then L2-normalised (as sentence-transformers' MiniLM does)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    return F.normalize(pooled, dim=-1)


def digest_tensors(digest: Any, state: dict[str, Tensor]) -> None:
    """Feed names and raw bytes of ``state``'s tensors, in its order, to a hashlib digest."""
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


class ChannelEncoder(nn.Module):
    """Frozen base + one LoRA adapter per channel (peft), with a cacheable frozen prefix."""

    def __init__(
        self,
        base: PreTrainedModel,
        tokenizer,
        channels: Sequence[str],
        config: ModelConfig,
        max_tokens: int = 2048,
        max_rows: int = 64,
    ) -> None:
        """LoRA settings (rank, alpha, dropout, target modules, top layers) and the token
        limit come from ``config``; ``max_tokens``/``max_rows`` bound one padded batch."""
        super().__init__()
        lora_layers, target_modules = config.lora_layers, config.lora_target_modules
        max_length = config.max_length
        num_layers = base.config.num_hidden_layers
        if not 1 <= lora_layers <= num_layers:
            raise ValueError(f"lora_layers must be in 1..{num_layers}, got {lora_layers}")
        self.channels = tuple(channels)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_tokens = max_tokens
        self.max_rows = max_rows
        self.first_lora_layer = num_layers - lora_layers
        self.layer_dtype: torch.dtype | None = None  # bfloat16 autocast (model/precision.py)
        self.frozen_weight_dtype: torch.dtype | None = None  # see store_frozen_weights
        for name, module in base.named_modules():  # frozen base: no dropout (see module doc)
            if isinstance(module, nn.Dropout) and "lora" not in name:
                module.p = 0.0
        lora_config = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(target_modules),
            layers_to_transform=list(range(self.first_lora_layer, num_layers)),
            layers_pattern="layer",
        )
        peft_model = get_peft_model(base, lora_config, adapter_name=self.channels[0])
        for channel in self.channels[1:]:
            peft_model.add_adapter(channel, lora_config)
        # LoRA layers are injected in place; keep the plain transformer, not the peft wrapper,
        # so parameter names stay short and stable.
        self.base = peft_model.base_model.model
        self._lora_modules = [m for m in self.base.modules() if isinstance(m, LoraLayer)]
        if not self._lora_modules:
            raise ValueError(f"no LoRA target {tuple(target_modules)} found in the base model")
        self._lora_params = [p for n, p in self.base.named_parameters() if "lora_" in n]
        for name, param in self.base.named_parameters():
            param.requires_grad_("lora_" in name)
        self.active_channel: str | None = None
        self.activate(self.channels[0])
        # free texts run packed, without padding, where the layers allow it (model/packed.py)
        self.runs_packed = supports_packing(self.base.encoder.layer)
        self.pack_tokens = PACK_TOKENS  # real tokens per pack

    @property
    def hidden_size(self) -> int:
        return int(self.base.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return self.base.embeddings.word_embeddings.weight.device

    def activate(self, channel: str) -> None:
        """Route the LoRA layers through ``channel``'s adapter.

        peft's ``set_adapter`` also turns off ``requires_grad`` of the other adapters, which
        would silently drop the gradients of channels already run in this step; restore it.
        """
        if channel == self.active_channel:
            return
        for module in self._lora_modules:
            module.set_adapter(channel)
        for param in self._lora_params:
            param.requires_grad_(True)
        self.active_channel = channel

    # --- tokenisation -------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, truncated to ``max_length``, unpadded."""
        out = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return out["input_ids"]

    def _pad(self, ids: Sequence[Sequence[int]], width: int | None = None) -> tuple[Tensor, Tensor]:
        """Padded token ids and mask on the encoder's device (filled on the CPU, moved once)."""
        width = width or max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id or 0
        cpu = torch.device("cpu")
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long, device=cpu)
        mask = torch.zeros((len(ids), width), dtype=torch.long, device=cpu)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long, device=cpu)
            mask[row, : len(seq)] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def store_frozen_weights(self, dtype: torch.dtype) -> None:
        """Keep the frozen matrices of the transformer layers in ``dtype`` (the ``layer_dtype``
        of an inference-only model): autocast would otherwise cast each of them again at every
        call, most of the time of one short text. The results are the same; the float32 paths
        (the prefix cache, ``encode_full``) refuse afterwards, as their weights are gone."""
        if dtype != self.layer_dtype:
            raise ValueError(f"frozen weights in {dtype} need layer_dtype {dtype}")
        for module in self.base.encoder.layer.modules():
            if isinstance(module, nn.Linear) and not module.weight.requires_grad:
                module.weight.data = module.weight.data.to(dtype)
        self.frozen_weight_dtype = dtype

    def _check_weights(self, layer_dtype: torch.dtype | None) -> None:
        if self.frozen_weight_dtype not in (None, layer_dtype):
            raise RuntimeError(
                f"the frozen layers are stored in {self.frozen_weight_dtype} for inference "
                "(store_frozen_weights); this float32 path needs a model loaded in float32"
            )

    # --- frozen prefix --------------------------------------------------------------------
    def _run_layers(self, hidden: Tensor, mask: Tensor, start: int, stop: int) -> Tensor:
        """Layers ``start:stop``, autocast to ``layer_dtype`` when set; float32 out."""
        self._check_weights(self.layer_dtype)
        mask4d = create_bidirectional_mask(
            config=self.base.config, inputs_embeds=hidden, attention_mask=mask
        )
        extra = {}
        encoder = self.base.encoder
        if hasattr(encoder, "compute_position_bias"):  # MPNet: relative positions, per width
            extra["position_bias"] = encoder.compute_position_bias(hidden)
        with autocast_layers(hidden.device.type, self.layer_dtype):
            for layer in encoder.layer[start:stop]:
                hidden = layer(hidden, mask4d, **extra)
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden  # MPNet: a tuple
        return hidden.float()

    @torch.no_grad()
    def prefix(self, ids: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """Hidden states entering the first LoRA layer for one padded batch (frozen weights)."""
        input_ids, mask = self._pad(ids)
        hidden = self.base.embeddings(input_ids=input_ids)
        return self._run_layers(hidden, mask, 0, self.first_lora_layer), mask

    def prefix_fingerprint(self, token_ids: Sequence[Sequence[int]], dtype: torch.dtype) -> str:
        """SHA-256 of everything a :class:`PrefixCache` depends on: the frozen prefix's weights
        (embeddings and the layers below the first LoRA layer), the texts' token ids in order
        (so the tokenizer and truncation too) and the cache dtype."""
        digest = hashlib.sha256()
        modules = [self.base.embeddings, *self.base.encoder.layer[: self.first_lora_layer]]
        for module in modules:
            digest_tensors(digest, module.state_dict())
        header = {"dtype": str(dtype), "n": len(token_ids)}
        digest.update(json.dumps(header, sort_keys=True).encode())
        for ids in token_ids:
            digest.update(json.dumps(list(ids)).encode())
        return digest.hexdigest()

    def cached_prefix(
        self, texts: Sequence[str], dtype: torch.dtype, folder: Path | str | None
    ) -> PrefixCache:
        """The frozen prefix of every text (call with distinct texts), reusing
        ``folder/<fingerprint>.pt`` when an earlier call (an earlier stage, another process)
        computed the same prefix; the result is identical."""
        token_ids = self.tokenize(texts) if texts else []
        if folder is None:
            return self._cache_from_ids(token_ids, dtype)
        path = Path(folder) / f"{self.prefix_fingerprint(token_ids, dtype)}.pt"
        if path.is_file():
            try:
                cache = PrefixCache.load(path)
                if len(cache) == len(texts) and cache.flat.dtype == dtype:
                    return cache
                log.warning("prefix cache %s does not match its texts; rebuilding it", path)
            except Exception as error:  # e.g. a truncated copy: rebuild, never fail on a cache
                log.warning("prefix cache %s unreadable (%s); rebuilding it", path, error)
        cache = self._cache_from_ids(token_ids, dtype)
        cache.save(path)
        return cache

    @torch.no_grad()
    def _cache_from_ids(self, token_ids: list[list[int]], dtype: torch.dtype) -> PrefixCache:
        """The cache on the CPU (where it is saved), computed on the encoder's device and in
        float32 whatever ``layer_dtype`` says: one file serves every precision."""
        cpu = torch.device("cpu")
        lengths = torch.tensor([len(x) for x in token_ids], dtype=torch.long, device=cpu)
        offsets = torch.zeros(len(token_ids), dtype=torch.long, device=cpu)
        if len(token_ids):
            offsets[1:] = torch.cumsum(lengths, 0)[:-1]
        flat = torch.empty((int(lengths.sum()), self.hidden_size), dtype=dtype, device=cpu)
        layer_dtype, self.layer_dtype = self.layer_dtype, None
        try:
            for bucket in length_buckets(lengths, self.max_tokens, self.max_rows):
                hidden, _ = self.prefix([token_ids[i] for i in bucket.tolist()])
                hidden = hidden.to(cpu)
                for row, i in enumerate(bucket.tolist()):
                    n = int(lengths[i])
                    flat[offsets[i] : offsets[i] + n] = hidden[row, :n].to(dtype)
        finally:
            self.layer_dtype = layer_dtype
        return PrefixCache(flat=flat, offsets=offsets, lengths=lengths)

    # --- trainable top ----------------------------------------------------------------------
    def encode_cached(self, cache: PrefixCache, ids: Tensor, channel: str) -> Tensor:
        """Pooled (n, H) embeddings of cached texts ``ids`` through ``channel``'s adapter."""
        self.activate(channel)
        parts, order = [], []
        for bucket in length_buckets(cache.lengths[ids], self.max_tokens, self.max_rows):
            hidden, mask = cache.gather(ids[bucket])
            top = self._run_layers(
                hidden, mask, self.first_lora_layer, len(self.base.encoder.layer)
            )
            parts.append(mean_pool(top, mask))
            order.append(bucket)
        pooled = torch.cat(parts)
        return pooled[torch.argsort(torch.cat(order))]

    def encode_full(
        self, texts: Sequence[str], channel: str, pad_to_max_length: bool = False
    ) -> Tensor:
        """Pooled (n, H) embeddings through the whole transformer, no cache (reference path).

        ``pad_to_max_length`` pads every sequence to ``max_length`` in one batch, as the naive
        design did; otherwise the same length buckets as the cached path are used.
        """
        self._check_weights(None)
        self.activate(channel)
        token_ids = self.tokenize(texts)
        cpu = torch.device("cpu")
        if pad_to_max_length:
            input_ids, mask = self._pad(token_ids, self.max_length)
            out = self.base(input_ids=input_ids, attention_mask=mask).last_hidden_state
            return mean_pool(out, mask)
        lengths = torch.tensor([len(x) for x in token_ids], dtype=torch.long, device=cpu)
        parts, order = [], []
        for bucket in length_buckets(lengths, self.max_tokens, self.max_rows):
            input_ids, mask = self._pad([token_ids[i] for i in bucket.tolist()])
            out = self.base(input_ids=input_ids, attention_mask=mask).last_hidden_state
            parts.append(mean_pool(out, mask))
            order.append(bucket)
        return torch.cat(parts)[torch.argsort(torch.cat(order)).to(self.device)]

    @contextmanager
    def adapters_off(self) -> Iterator[None]:
        """Run the bare frozen base inside the block (every LoRA adapter bypassed)."""
        for module in self._lora_modules:
            module.enable_adapters(False)
        try:
            yield
        finally:
            for module in self._lora_modules:
                module.enable_adapters(True)
            for param in self._lora_params:  # enable_adapters freezes the inactive ones
                param.requires_grad_(True)

    def encode_uncached_routes(
        self, texts: Sequence[str], routes: Sequence[str | None]
    ) -> list[Tensor]:
        """Pooled (n, H) vectors of the texts per route: a channel's adapter, or ``None`` for
        the bare base (every adapter bypassed). The frozen prefix is computed once and shared
        by the routes, so the base vectors beside the adapted ones cost only the top layers."""
        token_ids = self.tokenize(texts)
        if self.runs_packed:
            return self._packed_routes(token_ids, routes)
        lengths = torch.tensor([len(x) for x in token_ids], dtype=torch.long, device="cpu")
        parts: list[list[Tensor]] = [[] for _ in routes]
        order = []
        for bucket in length_buckets(lengths, self.max_tokens, self.max_rows):
            hidden, mask = self.prefix([token_ids[i] for i in bucket.tolist()])
            for route, out in zip(routes, parts, strict=True):
                out.append(mean_pool(self._top_layers(hidden, mask, route), mask))
            order.append(bucket)
        inverse = torch.argsort(torch.cat(order)).to(self.device)
        return [torch.cat(out)[inverse] for out in parts]

    def _top_layers(self, hidden: Tensor, mask: Tensor, route: str | None) -> Tensor:
        """The layers from the first LoRA layer up, through ``route`` (see above)."""
        with self._route(route):
            return self._run_layers(
                hidden, mask, self.first_lora_layer, len(self.base.encoder.layer)
            )

    @contextmanager
    def _route(self, route: str | None) -> Iterator[None]:
        """Inside the block, the LoRA layers run ``route``: a channel's adapter, or none."""
        if route is None:
            with self.adapters_off():
                yield
            return
        self.activate(route)
        yield

    def _packed_routes(
        self, token_ids: list[list[int]], routes: Sequence[str | None]
    ) -> list[Tensor]:
        """:meth:`encode_uncached_routes` over packed tokens (``naics_ml.model.packed``): the
        padded path's vectors up to float rounding, each stage in the same number format."""
        self._check_weights(self.layer_dtype)
        layers = self.base.encoder.layer
        out = [torch.empty((len(token_ids), self.hidden_size), device=self.device) for _ in routes]
        for positions in split_into_packs(token_ids, self.pack_tokens):
            packed = pack_texts(
                [token_ids[i] for i in positions], self.max_tokens, self.max_rows, self.device
            )
            with torch.no_grad():
                hidden = self.base.embeddings(
                    input_ids=packed.input_ids,
                    position_ids=packed.position_ids,
                    token_type_ids=torch.zeros_like(packed.input_ids),
                )[0]
                with autocast_layers(self.device.type, self.layer_dtype):
                    hidden = run_packed_layers(layers[: self.first_lora_layer], hidden, packed)
                hidden = hidden.float()
            rows = torch.tensor(positions, dtype=torch.long, device=self.device)
            for route, vectors in zip(routes, out, strict=True):
                with self._route(route), autocast_layers(self.device.type, self.layer_dtype):
                    top = run_packed_layers(layers[self.first_lora_layer :], hidden, packed)
                vectors[rows] = packed.mean_pool(top.float())
        return out
