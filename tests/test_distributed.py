"""Two CPU processes under torchrun (gloo) train the tiny model from tiny shards in lockstep.

The same code path selects NCCL and cuda:LOCAL_RANK for a CUDA device; that choice is tested
without a GPU in tests/test_device.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from naics_ml.model.network import ModelConfig
from naics_ml.stage_table import stage_spec
from naics_ml.training.checkpoint import load_checkpoint
from naics_ml.training.config import TrainConfig
from naics_ml.training.distributed import weights_fingerprint

from .tiny import save_tiny_bert

REPO = Path(__file__).resolve().parents[1]
SECTORS = {
    "11": ["farm", "wheat", "cattle", "dairy", "corn"],
    "21": ["mine", "coal", "gold", "oil", "salt"],
}


def write_inputs(root: Path) -> dict[str, Path]:
    rows = []
    for sector, (head, *items) in SECTORS.items():
        chain = [sector, f"{sector}1", f"{sector}11", f"{sector}111"]
        for i, code in enumerate(chain):
            rows.append((code, i and chain[i - 1], sector, f"{head} level {len(code)}", None))
        rows += [
            (f"{sector}111{j}", chain[-1], sector, f"{w} {head}", f"growing {w}")
            for j, w in enumerate(items)
        ]
    codes = pl.DataFrame(
        rows, schema=["code", "parent", "sector", "title", "description"], orient="row"
    ).with_row_index("index")
    lookup = dict(zip(codes["code"], codes["index"], strict=True))
    codes = codes.with_columns(
        pl.col("index").cast(pl.Int32),
        pl.col("code").str.len_chars().cast(pl.Int8).alias("level"),
        pl.Series("parent_index", [lookup.get(p) for p in codes["parent"]], dtype=pl.Int32),
        pl.lit(None, pl.String).alias("examples"),
        pl.lit(None, pl.String).alias("excluded"),
        pl.lit([], pl.List(pl.String)).alias("excluded_codes"),
    ).drop("parent")
    codes.write_parquet(root / "codes.parquet")

    sector, level = codes["sector"].to_numpy(), codes["level"].to_numpy()
    for s in SECTORS:
        six = np.flatnonzero((sector == s) & (level == 6))
        other = np.flatnonzero(sector != s)
        far = np.flatnonzero((sector == s) & (level < 5))
        table = [
            (a, p, n, 1 if sector[n] != s else 2)
            for a in six
            for p in six
            if a != p
            for n in [*other, *far]
        ]
        a, p, n, h = (np.array(c) for c in zip(*table, strict=True))
        folder = root / "triplets" / f"sector={s}"
        folder.mkdir(parents=True)
        pq.write_table(
            pa.table(
                {
                    "anchor": a.astype(np.int16),
                    "positive": p.astype(np.int16),
                    "negative": n.astype(np.int16),
                    "hardness": h.astype(np.int8),
                    "distance_ap": np.full(len(a), 2.0, np.float32),
                    "distance_an": np.where(h == 1, 10.0, 6.5).astype(np.float32),
                }
            ),
            folder / "part-00000.parquet",
        )
    six = codes.filter(pl.col("level") == 6)
    pl.DataFrame(
        {
            "code": six["code"].to_list() * 2,
            "index": six["index"].to_list() * 2,
            "text": [f"{t} company" for t in six["title"]] + [f"{t} shop" for t in six["title"]],
            "split": ["train"] * six.height + ["validation"] * six.height,
        }
    ).with_columns(pl.col("index").cast(pl.Int32)).write_parquet(root / "queries.parquet")

    base = root / "tiny-bert"
    save_tiny_bert(base)
    return {
        "codes": root / "codes.parquet",
        "queries": root / "queries.parquet",
        "triplets": root / "triplets",
        "base": base,
    }


def test_torchrun_two_ranks_train_in_lockstep(tmp_path):
    inputs = write_inputs(tmp_path)
    model_config = ModelConfig(
        base_model=str(inputs["base"]),
        lora_layers=1,
        max_length=32,
        embedding_dim=8,
        expert_hidden=32,
        lora_r=4,
        lora_alpha=8,
    )
    train_config = {
        "steps": 6,
        "batch_size": 4,
        "learning_rate": 5e-3,
        "warmup_steps": 1,
        "checkpoint_every": 3,
        "log_every": 1,
        "validation_every": 3,
        "query_batch_size": 2,
    }
    out = tmp_path / "stage"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "naics_ml.training.distributed",
        "--codes",
        str(inputs["codes"]),
        "--queries",
        str(inputs["queries"]),
        "--triplets",
        str(inputs["triplets"]),
        "--stage",  # the table's curriculum and settings, under --train-config's
        "stage_03_hard",
        "--out",
        str(out),
        "--no-progress",
        "--preset",  # the defaults; the device "cpu" selects gloo
        "cpu",
        "--model-config",
        json.dumps(model_config.to_dict()),
        "--train-config",
        json.dumps(train_config),
    ]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    print(f"torchrun took {time.perf_counter() - started:.1f}s")
    assert done.returncode == 0, done.stderr[-4000:]
    decoder, text = json.JSONDecoder(), done.stdout  # rank outputs may share a line
    reports = [decoder.raw_decode(text, i)[0] for i in _find_all(text, '{"rank"')]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    assert all(r["world_size"] == 2 and r["steps"] == 6 for r in reports)
    assert reports[0]["weights_sha256"] == reports[1]["weights_sha256"]

    state = load_checkpoint(out)
    assert state["complete"] and state["step"] == 6 and state["world_size"] == 2
    assert weights_fingerprint(state["model_state"]) == reports[0]["weights_sha256"]
    assert (out / "codes.parquet").is_file() and (out / "stage.json").is_file()
    assert "val_loss" in state["metrics"] and np.isfinite(state["metrics"]["loss"])
    hard = stage_spec("stage_03_hard")
    assert state["extra"]["curriculum"]["name"] == hard.curriculum
    for name in ("hierarchy_loss_weight", "query_loss_weight"):
        assert state["train_config"][name] == hard.train[name] != TrainConfig().to_dict()[name]


def _find_all(text: str, needle: str) -> list[int]:
    found, start = [], text.find(needle)
    while start >= 0:
        found.append(start)
        start = text.find(needle, start + 1)
    return found
