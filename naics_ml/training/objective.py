"""The loss of one training step, as one object that owns its settings.

    loss = hyperbolic InfoNCE over the triplets
         + ``query_loss_weight`` * query InfoNCE (query -> its code among all six-digit codes,
           or among the step's codes with ``query_candidates="step"``; only six-digit ones when
           the code table is given, so a query is never pushed away from its own parent)
         + ``hierarchy_loss_weight`` * normalised stress between the Lorentz distances of
           ``hierarchy_pairs`` stratified code pairs and ``hierarchy_scale`` * their tree
           distances (:mod:`naics_ml.training.tree_pairs`; pairs drawn from ``(seed, step, rank)``)
         + ``model.config.balance_weight`` * load-balance loss of the expert gate.

Every distinct code of the step is encoded once (``NaicsModel.encode_codes``); all codes when
the hierarchy loss or ``query_candidates="all"`` needs them. With the negative bank
(``TrainConfig.negative_bank``) only the anchors (and, when asked, the positives and the
queries' true codes) run live through the LoRA layers; see :mod:`naics_ml.model.negative_bank`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from naics_ml.data.codes import six_digit_mask
from naics_ml.model.lorentz import Lorentz
from naics_ml.model.loss import distortion_loss, hyperbolic_info_nce
from naics_ml.training.config import TrainConfig
from naics_ml.training.tree_pairs import TreePairs

if TYPE_CHECKING:
    from naics_ml.model.network import Encoded, NaicsModel

LOGGED_LOSSES = ("triplet", "query", "balance", "hierarchy")  # after the total, in this order


class TripletBatchLike(Protocol):
    """What the loss needs of a triplet batch (``naics_ml.triplets.sampler.TripletBatch``)."""

    anchor: np.ndarray  # (B,) code indices
    positive: np.ndarray  # (B,)
    negatives: np.ndarray  # (B, k); entries < 0 are padding and are masked


@dataclass
class StepLoss:
    """One step's loss: the total to back-propagate, its parts, and every encoded code's point."""

    total: Tensor
    parts: dict[str, Tensor]  # LOGGED_LOSSES, "utilization", "triplet_accuracy"
    points: Tensor

    def logged_values(self) -> Tensor:
        """(total, triplet, query, balance, hierarchy) as one float64 tensor (one all-reduce)."""
        values = [self.total.detach()] + [self.parts[name].detach() for name in LOGGED_LOSSES]
        return torch.stack(values).double()


@dataclass(frozen=True)
class StepCodes:
    """The code indices a step encodes, by role (CPU tensors): the triplets' ``anchor`` and
    ``positive`` (B,), ``negatives`` (B, k) with padding pointed at the anchor and masked out
    (``mask`` False), and ``query_codes`` (Q,), the true codes of the step's queries (None:
    no queries this step)."""

    anchor: Tensor
    positive: Tensor
    negatives: Tensor
    mask: Tensor
    query_codes: Tensor | None = None

    @classmethod
    def of(cls, batch: TripletBatchLike, query_codes: Tensor | None = None) -> StepCodes:
        def ids(values: np.ndarray) -> Tensor:
            return torch.tensor(np.asarray(values), dtype=torch.long, device="cpu")

        anchor, negatives = ids(batch.anchor), ids(batch.negatives)
        mask = negatives >= 0
        negatives = torch.where(mask, negatives, anchor[:, None].expand(*negatives.shape))
        return cls(anchor, ids(batch.positive), negatives, mask, query_codes)

    def roles(self) -> dict[str, Tensor]:
        """Each role's code indices, flat, in the order :meth:`flat` concatenates them."""
        roles = {"anchor": self.anchor, "positive": self.positive}
        roles["negatives"] = self.negatives.reshape(-1)
        if self.query_codes is not None:
            roles["queries"] = self.query_codes
        return roles

    def flat(self) -> Tensor:
        return torch.cat(list(self.roles().values()))

    def split(self, rows: Tensor) -> dict[str, Tensor]:
        """``rows`` aligned with :meth:`flat` (e.g. each code's row among the encoded ones),
        cut back into the roles."""
        roles = self.roles()
        parts = torch.split(rows, [len(v) for v in roles.values()])
        return dict(zip(roles, parts, strict=True))


class StageObjective:
    """Triplet + query + hierarchy + balance loss of a stage, set up once from its config.

    ``codes`` (the code table) restricts query candidates to six-digit codes and is needed by
    the hierarchy loss; ``query_codes[i]`` is the code index of prepared query ``i``.
    """

    def __init__(
        self,
        model: NaicsModel,
        config: TrainConfig,
        codes: pl.DataFrame | None = None,
        query_codes: np.ndarray | None = None,
    ) -> None:
        self.config = config
        self.manifold = model.manifold
        self.balance_weight = float(model.config.balance_weight)
        self.device = next(model.parameters()).device
        self.six_digit = _six_digit_mask(codes, self.device)
        self.tree_pairs: TreePairs | None = None
        if config.hierarchy_loss_weight > 0:
            if codes is None:
                raise ValueError(
                    "TrainConfig.hierarchy_loss_weight > 0 needs the code table (codes=...)"
                )
            self.tree_pairs = TreePairs.from_codes(codes)
        self.query_codes = None  # on the CPU with the step's other code ids
        if query_codes is not None:
            self.query_codes = torch.as_tensor(query_codes, dtype=torch.long, device="cpu")
        all_candidates = query_codes is not None and config.query_candidates == "all"
        self.every_code = model.num_codes if self.tree_pairs or all_candidates else None

    def __call__(
        self,
        model: NaicsModel,
        batch: TripletBatchLike,
        query_ids: np.ndarray | None,
        step: int,
        rank: int = 0,
    ) -> StepLoss:
        q_ids = None
        if query_ids is not None and len(query_ids) > 0:
            q_ids = torch.tensor(np.asarray(query_ids), dtype=torch.long, device="cpu")
        codes = StepCodes.of(batch, None if q_ids is None else self.query_codes[q_ids])
        b, k = codes.negatives.shape
        if self.every_code is not None:  # all codes: inverse is the identity on code indices
            unique, inverse = torch.arange(self.every_code, device="cpu"), codes.flat()
        else:
            unique, inverse = torch.unique(codes.flat(), return_inverse=True)
        at = codes.split(inverse.to(self.device))  # each role's rows among the encoded codes
        encoded = model.encode_codes(unique.to(self.device), live=self._live(codes))
        points = encoded.points
        a, p = points[at["anchor"]], points[at["positive"]]
        n = points[at["negatives"]].view(b, k, -1)
        mask = None if bool(codes.mask.all()) else codes.mask.to(self.device)
        triplet = hyperbolic_info_nce(a, p, n, self.manifold, self.config.temperature, mask)
        balance, utilization = encoded.balance_loss, encoded.expert_utilization
        total, query = triplet, torch.zeros((), device=self.device)
        if q_ids is not None:
            query, q_enc = self._query_loss(model, q_ids, unique, points, at["queries"])
            balance = 0.5 * (balance + q_enc.balance_loss)
            utilization = 0.5 * (utilization + q_enc.expert_utilization)
            total = triplet + self.config.query_loss_weight * query
        hierarchy = torch.zeros((), device=self.device)
        pairs = self._hierarchy_pairs(step, rank)
        if pairs is not None:
            i, j, target = pairs
            hierarchy = distortion_loss(self.manifold.distance(points[i], points[j]), target)
            total = total + self.config.hierarchy_loss_weight * hierarchy
        parts = {"triplet": triplet, "query": query, "balance": balance, "hierarchy": hierarchy}
        parts["utilization"] = utilization
        parts["triplet_accuracy"] = triplet_accuracy(a, p, n, mask, self.manifold)
        total = total + self.balance_weight * balance
        return StepLoss(total, parts, points)

    def step_metrics(self, loss: StepLoss, values: Tensor, grad_norm: float) -> dict[str, float]:
        """What a step logs: the (rank-averaged) loss ``values``, accuracy, experts, radii."""
        total, triplet, query, balance, hierarchy = (float(v) for v in values)
        out = {
            "loss": total,
            "triplet_loss": triplet,
            "query_loss": query,
            "balance_loss": balance,
            "hierarchy_loss": hierarchy,
            "grad_norm": grad_norm,
            "triplet_accuracy": float(loss.parts["triplet_accuracy"]),
        }
        for i, share in enumerate(loss.parts["utilization"].detach().flatten().tolist()):
            out[f"expert_utilization_{i}"] = float(share)
        with torch.no_grad():
            r = self.manifold.radius(loss.points.detach())
        out["radius_mean"] = float(r.mean())
        out["radius_max"] = float(r.max())
        return out

    def _live(self, codes: StepCodes) -> Tensor | None:
        """The codes encoded live with the negative bank (None: every code, the exact loss)."""
        if not self.config.negative_bank:
            return None
        live = [codes.anchor]
        live += [codes.positive] if self.config.bank_live_positives else []
        if self.config.bank_live_query_codes and codes.query_codes is not None:
            live.append(codes.query_codes)
        return torch.cat(live).to(self.device)

    def _query_loss(
        self, model: NaicsModel, q_ids: Tensor, unique: Tensor, points: Tensor, targets: Tensor
    ) -> tuple[Tensor, Encoded]:
        """Query InfoNCE against the step's candidate codes (six-digit ones when known)."""
        q_enc = model.encode_queries(q_ids.to(self.device))
        keep = torch.ones(len(unique), dtype=torch.bool, device=self.device)
        if self.six_digit is not None:
            keep = self.six_digit[unique.to(self.device)]
        target_pos = targets.to(self.device)
        keep[target_pos] = True
        cand_index = torch.nonzero(keep).squeeze(1)
        remap = torch.full((len(unique),), -1, dtype=torch.long, device=self.device)
        remap[cand_index] = torch.arange(len(cand_index), device=self.device)
        logits = -self.manifold.pairwise_distance(q_enc.points, points[cand_index])
        return F.cross_entropy(logits / self.config.temperature, remap[target_pos]), q_enc

    def _hierarchy_pairs(self, step: int, rank: int) -> tuple[Tensor, Tensor, Tensor] | None:
        """One step's pairs (i, j, scale * tree distance), a function of (seed, step, rank), so
        a resumed run draws the pairs an uninterrupted one would."""
        if self.tree_pairs is None:
            return None
        rng = np.random.default_rng([self.config.seed, step, rank, 0x7EE])
        i, j = self.tree_pairs.sample(rng, self.config.hierarchy_pairs)
        target = self.tree_pairs.tree_distance[i, j] * self.config.hierarchy_scale
        return (
            torch.as_tensor(i, device=self.device),
            torch.as_tensor(j, device=self.device),
            torch.as_tensor(target, dtype=torch.float32, device=self.device),
        )


@torch.no_grad()
def triplet_accuracy(
    a: Tensor, p: Tensor, n: Tensor, mask: Tensor | None, manifold: Lorentz
) -> Tensor:
    """Share of anchors whose positive is nearer than every (unmasked) negative."""
    d_pos = manifold.distance(a, p)
    d_neg = manifold.distance(a[:, None, :], n)
    if mask is not None:
        d_neg = d_neg.masked_fill(~mask, math.inf)
    return (d_pos[:, None] < d_neg).all(dim=1).float().mean()


def _six_digit_mask(codes: pl.DataFrame | None, device: torch.device) -> Tensor | None:
    if codes is None:
        return None
    frame = codes.sort("index")
    if frame["index"].to_list() != list(range(frame.height)):
        raise ValueError("the code table's index column must be 0..n-1")
    return torch.as_tensor(six_digit_mask(frame), device=device)
