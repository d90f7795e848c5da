"""Training-step throughput of NaicsModel against the naive design, measured in one run.

One step = forward + backward + AdamW over a batch of 32 triplets with k = 16 negatives on the
real 2022 NAICS code texts (all 2,125 codes prepared) and the default all-MiniLM-L6-v2 base.
Batches come from the real triplet shards (``storage/artifacts/<rev>/triplets``) through
``TripletSampler`` with the ``03_hard`` curriculum; without shards, from a random stand-in
sampler (the output's ``batches`` says which). Query batches are not part of this step.

* fast (``triplets_per_s``): the default training step (``TrainConfig()``, through the
  training loop's own loss, ``StageObjective``): LoRA on the top 2 layers, cached frozen prefix,
  each distinct code encoded once, length-bucketed padding, and the negative bank: only the
  anchors run through the LoRA layers, every other code's channel vectors come from the bank
  (refreshed once before timing; its cost is ``bank_refresh_s``, paid every
  ``TrainConfig.bank_refresh_every`` steps); the fusion runs over all 2,125 codes and the step
  includes the hierarchy loss on 3,072 code pairs.
* exact (``exact_triplets_per_s``): the triplet loss without the bank, every distinct code of
  the step live through the LoRA layers (what ``TrainConfig(negative_bank=False)`` does for
  the triplets).
* naive: LoRA on every layer, every anchor/positive/negative slot encoded separately through
  all four channels (each channel one text, the examples not split into lines), padded to
  max_length 128, no cache, no dedupe. Its cost is linear in the
  number of triplets (nothing is shared), so it is measured on a few triplets per round with
  gradient accumulation and reported per triplet; this keeps the benchmark within minutes.
  Missing channel texts are encoded as empty strings, as that design did.

Rounds interleave a fast, an exact and a naive step so that all see the same machine load.

Prints one JSON object. Usage: .venv/bin/python benchmarks/train_step.py [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import polars as pl
import torch

from naics_ml.model.channels import code_channel_texts
from naics_ml.model.loss import hyperbolic_info_nce
from naics_ml.model.network import ModelConfig, NaicsModel
from naics_ml.revision_folder import RevisionFolder
from naics_ml.training.bank import refresh_bank
from naics_ml.training.config import TrainConfig
from naics_ml.training.objective import StageObjective
from naics_ml.triplets.sampler import TripletBatch

CENSUS = Path(__file__).resolve().parents[1] / "../shared/census/2022"


ARTIFACTS = RevisionFolder(Path(__file__).resolve().parents[1] / "storage/artifacts/2022")
SKIP_BATCHES = 300  # the shuffle buffer (8,192 pairs) is full after ~256 batches of 32


def load_codes() -> pl.DataFrame:
    if ARTIFACTS.codes.is_file():
        return pl.read_parquet(ARTIFACTS.codes).sort("index")
    from naics_ml.data.codes import load_code_table

    census = CENSUS if CENSUS.exists() else Path("/work/shared/census/2022")
    return load_code_table(census, "2022").sort("index")


def shard_batches(codes: pl.DataFrame, n: int, batch: int, seed: int) -> list[np.ndarray] | None:
    """Batches (batch, 2 + k) from the real triplet shards with the 03_hard curriculum; padded
    negatives (< 0) become the anchor, as in training. None when there are no shards.

    The sampler's shuffle buffer fills gradually (its first batches hold few distinct anchors),
    so the first ``SKIP_BATCHES`` are dropped: timed batches look like those of a running stage.
    """
    folder = ARTIFACTS.triplets
    if not folder.is_dir() or not any(folder.glob("sector=*/*.parquet")):
        return None
    from naics_ml.triplets.curriculum import load_curriculum
    from naics_ml.triplets.sampler import TripletSampler

    sampler = TripletSampler(
        folder,
        codes["level"].to_numpy(),
        load_curriculum("03_hard"),
        batch,
        seed=seed,
        n_batches=n + SKIP_BATCHES,
        prefetch=0,
    )
    out = []
    for position, b in enumerate(sampler):
        if position < SKIP_BATCHES:
            continue
        negatives = np.where(b.negatives >= 0, b.negatives, b.anchor[:, None])
        out.append(np.concatenate([b.anchor[:, None], b.positive[:, None], negatives], 1))
    return out


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


def default_step(model: NaicsModel, objective: StageObjective, ids: np.ndarray, n: int) -> None:
    """Forward + backward of the default training step (no query batch), step number ``n``."""
    negatives = ids[:, 2:]
    batch = TripletBatch(ids[:, 0], ids[:, 1], negatives, np.zeros_like(negatives))
    objective(model, batch, None, step=n).total.backward()


def step(model: NaicsModel, ids: torch.Tensor, naive: bool) -> None:
    if naive:
        enc = model.encode_codes_reference(ids, dedupe=False, pad_to_max_length=True)
    else:
        enc = model.encode_codes(ids)  # exact: every distinct code live
    pts = enc.points
    loss = hyperbolic_info_nce(pts[:, 0], pts[:, 1], pts[:, 2:], model.manifold, 0.1)
    loss = loss + model.config.balance_weight * enc.balance_loss
    loss.backward()


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


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--naive-per-step", type=int, default=1, help="naive triplets per round")
    parser.add_argument(
        "--base-model",
        default=ModelConfig().base_model,
        help="the frozen base (all-mpnet-base-v2 with the mpnet extra); default the stages'",
    )
    parser.add_argument(
        "--lora-target-modules",
        nargs="+",
        default=list(ModelConfig().lora_target_modules),
        help="the attention projections LoRA adapts (MPNet names them q v)",
    )
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    codes = load_codes()
    n_batches = args.warmup + args.steps
    batches = shard_batches(codes, n_batches, args.batch, seed=0)
    source = "triplet shards, 03_hard"
    if batches is None:
        batches = sample_batches(codes, n_batches, args.batch, args.k, seed=0)
        source = "random stand-in (no triplet shards found)"
    k = batches[0].shape[1] - 2
    distinct = [len(np.unique(b)) for b in batches]
    live = [len(np.unique(b[:, 0])) for b in batches]
    channel_texts = code_channel_texts(codes)
    # the naive design encodes every channel, an empty string where a text is missing
    naive_texts = {c: ["" if t is None else t for t in texts] for c, texts in channel_texts.items()}
    base = {"base_model": args.base_model, "lora_target_modules": tuple(args.lora_target_modules)}
    fast, fast_opt, prepare_s = make(ModelConfig(**base), channel_texts)
    t0 = time.perf_counter()
    refresh_bank(fast)
    bank_refresh_s = time.perf_counter() - t0
    naive_config = ModelConfig(**base, lora_layers=6, line_channels=())
    naive, naive_opt, _ = make(naive_config, naive_texts)

    objective = StageObjective(fast, TrainConfig(), codes)
    steps_done = iter(range(10**9))

    def fast_step(ids: np.ndarray, bank: bool = True) -> None:
        fast_opt.zero_grad(set_to_none=True)
        if bank:
            default_step(fast, objective, ids, next(steps_done))
        else:
            step(fast, torch.from_numpy(ids), naive=False)
        fast_opt.step()

    def naive_step(ids: np.ndarray) -> None:
        # gradient accumulation over single-triplet micro-batches: the naive cost is linear
        naive_opt.zero_grad(set_to_none=True)
        for row in ids:
            step(naive, torch.from_numpy(row[None]), naive=True)
        naive_opt.step()

    # warm-up, then interleave the two designs so both see the same machine load
    rng = np.random.default_rng(1)
    for b in batches[: args.warmup]:
        fast_step(b)
        fast_step(b, bank=False)
        naive_step(b[: args.naive_per_step])
    fast_times, exact_times, naive_times = [], [], []
    for b in batches[args.warmup :]:
        fast_times.append(timed(lambda b=b: fast_step(b)))
        exact_times.append(timed(lambda b=b: fast_step(b, bank=False)))
        rows = b[rng.choice(len(b), args.naive_per_step, replace=False)]
        naive_times.append(timed(lambda rows=rows: naive_step(rows)))

    triplets_per_s = args.batch * len(fast_times) / sum(fast_times)
    exact_triplets_per_s = args.batch * len(exact_times) / sum(exact_times)
    naive_triplets = args.naive_per_step * len(naive_times)
    naive_triplets_per_s = naive_triplets / sum(naive_times)
    print(
        json.dumps(
            {
                "triplets_per_s": round(triplets_per_s, 3),
                "naive_triplets_per_s": round(naive_triplets_per_s, 4),
                "speedup": round(triplets_per_s / naive_triplets_per_s, 1),
                "exact_triplets_per_s": round(exact_triplets_per_s, 3),
                "exact_speedup": round(exact_triplets_per_s / naive_triplets_per_s, 1),
                "bank_refresh_s": round(bank_refresh_s, 1),
                "fast_step_s": [round(t, 2) for t in fast_times],
                "exact_step_s": [round(t, 2) for t in exact_times],
                "naive_s_per_triplet": [round(t / args.naive_per_step, 2) for t in naive_times],
                "naive_step_s_equivalent": round(args.batch / naive_triplets_per_s, 1),
                "naive_triplets_timed": naive_triplets,
                "batch": args.batch,
                "k": k,
                "batches": source,
                "distinct_codes_per_step": float(np.mean(distinct)),
                "live_codes_per_step": float(np.mean(live)),
                "slots_per_step": args.batch * (k + 2),
                "prepare_s": round(prepare_s, 1),
                "prepared_codes": codes.height,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "prefix_cache_mb": round(fast.prepared.cache.nbytes() / 2**20, 1),
                "threads": torch.get_num_threads(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "base_model": args.base_model,
            }
        )
    )


if __name__ == "__main__":
    main()
