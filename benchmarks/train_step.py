"""Training-step throughput of NaicsModel against the naive design, measured in one run.

One step = forward + backward + AdamW over a batch of 32 triplets with k = 16 negatives on the
real 2022 NAICS code texts and the default all-MiniLM-L6-v2 base.

* fast: the default model (LoRA on the top 2 layers, cached frozen prefix, each distinct code
  encoded once, length-bucketed padding).
* naive: LoRA on every layer, every anchor/positive/negative slot encoded separately through
  all four channels, padded to max_length 128, no cache, no dedupe. Its cost is linear in the
  number of triplets (nothing is shared), so it is measured on a few triplets with gradient
  accumulation and reported per triplet; this keeps the benchmark within a few minutes.

Prints one JSON object. Usage: .venv/bin/python benchmarks/train_step.py [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import polars as pl
import torch

from naics_ml.model import CHANNELS, ModelConfig, NaicsModel, hyperbolic_info_nce

CENSUS = Path(__file__).resolve().parents[1] / "../shared/census/2022"


def load_codes() -> pl.DataFrame:
    from naics_ml.codes import load_code_table

    census = CENSUS if CENSUS.exists() else Path("/work/shared/census/2022")
    return load_code_table(census, "2022")


def sample_batches(codes: pl.DataFrame, n: int, batch: int, k: int, seed: int) -> list[np.ndarray]:
    """Triplet-like batches (batch, 2 + k): anchor, a positive under the same parent, and
    negatives mostly from the anchor's sector (3 in 4) and otherwise from anywhere."""
    rng = np.random.default_rng(seed)
    code = codes["code"].to_list()
    sector = np.array(codes["sector"].to_list())
    parent = codes["parent_index"].fill_null(-1).to_numpy()
    by_parent: dict[int, np.ndarray] = {}
    for p in np.unique(parent):
        by_parent[int(p)] = np.flatnonzero(parent == p)
    by_sector = {s: np.flatnonzero(sector == s) for s in np.unique(sector)}
    leaves = np.flatnonzero(np.array([len(c) == 6 for c in code]))
    out = []
    for _ in range(n):
        rows = []
        for a in rng.choice(leaves, batch):
            siblings = by_parent[int(parent[a])]
            pos = rng.choice(siblings[siblings != a]) if len(siblings) > 1 else parent[a]
            same = by_sector[sector[a]]
            negs = np.where(
                rng.random(k) < 0.75, rng.choice(same, k), rng.integers(0, len(code), k)
            )
            rows.append([a, pos, *negs])
        out.append(np.asarray(rows, dtype=np.int64))
    return out


def step(model: NaicsModel, opt: torch.optim.Optimizer, ids: torch.Tensor, naive: bool) -> float:
    if naive:
        enc = model.encode_codes_reference(ids, dedupe=False, pad_to_max_length=True)
    else:
        enc = model.encode_codes(ids)
    pts = enc.points
    loss = hyperbolic_info_nce(pts[:, 0], pts[:, 1], pts[:, 2:], model.config.curvature, 0.1)
    loss = loss + model.config.balance_weight * enc.balance_loss
    loss.backward()
    return float(loss)


def make(
    config: ModelConfig, channel_texts: dict
) -> tuple[NaicsModel, torch.optim.Optimizer, float]:
    torch.manual_seed(0)
    model = NaicsModel(config)
    t0 = time.perf_counter()
    model.prepare(channel_texts)
    prepare_s = time.perf_counter() - t0
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=1e-4), prepare_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--naive-triplets", type=int, default=4, help="triplets timed (naive)")
    parser.add_argument("--naive-micro", type=int, default=2, help="triplets per micro-batch")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    codes = load_codes()
    channel_texts = {c: codes[c].to_list() for c in CHANNELS}
    batches = sample_batches(codes, args.warmup + args.steps, args.batch, args.k, seed=0)
    distinct = [len(np.unique(b)) for b in batches]

    model, opt, prepare_s = make(ModelConfig(), channel_texts)
    times = []
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        step(model, opt, torch.from_numpy(b), naive=False)
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    fast_step_s = float(np.median(times))
    cache_mb = model.cache_nbytes() / 2**20
    del model, opt

    naive_cfg = ModelConfig(lora_layers=6)
    naive, nopt, _ = make(naive_cfg, channel_texts)
    rows = np.concatenate(batches)[: args.naive_micro + args.naive_triplets]
    warm, timed = rows[: args.naive_micro], rows[args.naive_micro :]
    nopt.zero_grad(set_to_none=True)
    step(naive, nopt, torch.from_numpy(warm), naive=True)
    t0 = time.perf_counter()
    nopt.zero_grad(set_to_none=True)
    for s in range(0, len(timed), args.naive_micro):
        step(naive, nopt, torch.from_numpy(timed[s : s + args.naive_micro]), naive=True)
    nopt.step()
    naive_s = time.perf_counter() - t0

    triplets_per_s = args.batch / fast_step_s
    naive_triplets_per_s = len(timed) / naive_s
    print(
        json.dumps(
            {
                "triplets_per_s": round(triplets_per_s, 2),
                "naive_triplets_per_s": round(naive_triplets_per_s, 3),
                "speedup": round(triplets_per_s / naive_triplets_per_s, 1),
                "fast_step_s": round(fast_step_s, 3),
                "fast_step_s_all": [round(t, 3) for t in times],
                "naive_step_s_equivalent": round(args.batch / naive_triplets_per_s, 1),
                "naive_triplets_timed": len(timed),
                "batch": args.batch,
                "k": args.k,
                "distinct_codes_per_step": float(np.mean(distinct)),
                "slots_per_step": args.batch * (args.k + 2),
                "prepare_s": round(prepare_s, 1),
                "prefix_cache_mb": round(cache_mb, 1),
                "threads": torch.get_num_threads(),
                "base_model": ModelConfig().base_model,
            }
        )
    )


if __name__ == "__main__":
    main()
