"""How much the number format of the transformer layers moves the metrics, and its speed.

    python benchmarks/precision.py [--variant float32|bfloat16|int8] [--stage DIR]

Scores the index ``validation`` and ``test`` splits, the Maryland validation set and the
Boston set with ``predict``'s blend (hit@1, hit@5, MRR) and times the encoder. The validation
sets decide (the issue allows a move under 0.005); ``test`` and Boston are printed for
information only. ``int8`` is dynamic int8 quantization of every Linear layer except the
LoRA matrices (``torch.ao.quantization.quantize_dynamic``), an experiment: it was rejected
(docs/results.md). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from classify import REALTEXT, served_stage

from naics_ml.revision_folder import RevisionFolder


def evaluation_sets(known: list[str], entries_path: Path) -> dict[str, tuple[list, list]]:
    import polars as pl

    from naics_ml.data.realtext import (
        EVAL_FILE,
        VAL_FILE,
        load_labelled_texts,
        split_labelled_texts,
    )

    entries = pl.read_parquet(entries_path)
    sets = {}
    for split in ("validation", "test"):
        rows = entries.filter(pl.col("split") == split)
        sets[f"index_{split}"] = (rows["text"].to_list(), [[c] for c in rows["code"].to_list()])
    _, maryland = split_labelled_texts(load_labelled_texts(REALTEXT / VAL_FILE, known))
    boston = load_labelled_texts(REALTEXT / EVAL_FILE, known)
    sets["maryland_val"] = (maryland["text"].to_list(), maryland["codes"].to_list())
    sets["boston_eval_only"] = (boston["text"].to_list(), boston["codes"].to_list())
    return sets


def quantize_int8(classifier) -> None:
    import torch
    from torch.ao.quantization import quantize_dynamic

    base = classifier.model.encoder.base
    names = {
        n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in n
    }
    quantize_dynamic(base, names, dtype=torch.qint8, inplace=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", type=Path, help="a stage folder (default: the served one)")
    parser.add_argument("--variant", choices=("float32", "bfloat16", "int8"), default="float32")
    args = parser.parse_args()
    args.stage = args.stage or served_stage()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from naics_ml.evaluation.realtext_metrics import realtext_metrics
    from naics_ml.inference.classifier import Classifier

    precision = "bfloat16" if args.variant == "bfloat16" else "float32"
    classifier = Classifier.from_checkpoint(args.stage, precision=precision)
    if args.variant == "int8":
        quantize_int8(classifier)
    entries = RevisionFolder(args.stage.parents[1]).entries
    out: dict[str, object] = {"stage": str(args.stage), "variant": args.variant}
    encode_s, encoded = 0.0, 0
    for name, (texts, truth) in evaluation_sets(
        classifier.six_digit_codes.tolist(), entries
    ).items():
        start = time.perf_counter()
        points, frozen = classifier.model.encode_texts_and_frozen(texts)
        encode_s, encoded = encode_s + time.perf_counter() - start, encoded + len(texts)
        parts = classifier.score_parts(points, texts, base_query=frozen)
        metrics = realtext_metrics(
            parts.mix(classifier.memory_config), classifier.six_digit_codes, truth, ""
        )
        out[name] = {k: round(metrics[k], 4) for k in ("hit1", "hit5", "mrr")} | {"n": len(texts)}
    out["encoder_texts_per_s"] = round(encoded / encode_s, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
