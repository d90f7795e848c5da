"""The validation callback of a stage: held-out index entries against the six-digit codes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from naics_ml.model.lorentz import wide
from naics_ml.model.ranking import pessimistic_rank

if TYPE_CHECKING:
    from naics_ml.model.network import NaicsModel

__all__ = ["query_validator"]


def query_validator(
    query_ids: np.ndarray,
    query_codes: np.ndarray,
    candidate_codes: np.ndarray,
    temperature: float,
    batch_size: int = 256,
    prefix: str = "val_",
) -> Callable[[NaicsModel], dict[str, float]]:
    """A ``validate`` callback: held-out queries (already prepared in the model) against
    ``candidate_codes`` (e.g. all six-digit code indices).

    Returns ``val_loss`` (cross-entropy of the query softmax over all candidates, the quantity
    the query loss trains), ``val_top1`` and ``val_mrr``. Never pass the test split here.
    """
    q_all = torch.tensor(np.asarray(query_ids), dtype=torch.long, device="cpu")
    cand = torch.tensor(np.asarray(candidate_codes), dtype=torch.long, device="cpu")
    position = {int(c): i for i, c in enumerate(cand.tolist())}
    missing = [int(c) for c in np.asarray(query_codes) if int(c) not in position]
    if missing:
        raise ValueError(f"query codes not among the candidates, e.g. {missing[:5]}")
    target_all = torch.as_tensor([position[int(c)] for c in np.asarray(query_codes)], device="cpu")

    def validate(model: NaicsModel) -> dict[str, float]:
        device = next(model.parameters()).device
        code_points = torch.cat(
            [
                model.encode_codes(cand[i : i + batch_size].to(device)).points
                for i in range(0, len(cand), batch_size)
            ]
        )
        total, hits, rr = 0.0, 0.0, 0.0
        for i in range(0, len(q_all), batch_size):
            q_points = model.encode_queries(q_all[i : i + batch_size].to(device)).points
            dist_qc = wide(model.manifold.pairwise_distance(q_points, code_points))
            target = target_all[i : i + batch_size].to(dist_qc.device)
            total += float(F.cross_entropy(-dist_qc / temperature, target, reduction="sum"))
            rank = pessimistic_rank(dist_qc, dist_qc.gather(1, target[:, None])[:, 0])
            hits += float((rank == 1).sum())
            rr += float((1.0 / rank.double()).sum())
        n = max(len(q_all), 1)
        return {f"{prefix}loss": total / n, f"{prefix}top1": hits / n, f"{prefix}mrr": rr / n}

    return validate
