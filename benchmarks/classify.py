"""Speed and memory of classifying business descriptions with a trained stage.

    python benchmarks/classify.py [--stage storage/artifacts/2022/models/stage_03_hard]

The default stage is the one ``naics-gemini classify`` serves: the stage validation chose for
2022 (``models/serving.json``).

Measures, through ``Classifier.predict`` (top 5, with confidence, fallback, evidence and
exclusion warnings) on this machine: import time, load time of the stage folder (after the
imports), one-text latency (p50/p95 over 200 single calls) and batch throughput over 10,000
real firm descriptions (the 1,620 labelled texts of ``../shared/realtext``, cycled; only timed,
nothing is tuned on them), and peak RSS. Prints one JSON object; ``cpu_steal_pct`` is the CPU
time the hypervisor took meanwhile (a noisy neighbour, not the code).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from measure import StealMeter, peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
REALTEXT = ROOT.parent / "shared" / "realtext"


def served_stage() -> Path:
    """What ``naics-gemini classify`` serves by default for 2022 (``models/serving.json``)."""
    from naics_ml.inference.serving import served_stage as served

    return served(ROOT / "storage" / "artifacts", "2022")


def real_texts(n: int) -> list[str]:
    import polars as pl

    texts: list[str] = []
    for file in sorted(REALTEXT.glob("*.csv")):
        texts += pl.read_csv(file)["text"].drop_nulls().to_list()
    if not texts:
        raise SystemExit(f"no labelled texts (*.csv with a text column) under {REALTEXT}")
    return [texts[i % len(texts)] for i in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", type=Path, help="a stage folder (default: the served one)")
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--precision", default="auto", help="float32, bfloat16 or auto (the CLI's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    args = parser.parse_args()
    args.stage = args.stage or served_stage()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    steal = StealMeter()
    t0 = time.perf_counter()
    from naics_ml.inference.classifier import Classifier

    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    classifier = Classifier.from_checkpoint(
        args.stage, precision=args.precision, device=args.device
    )
    load_s = time.perf_counter() - t0
    texts = real_texts(args.texts)
    classifier.predict(texts[:8])  # warm-up: exclusion vectors, kernels
    single = []
    for text in texts[: args.singles]:
        t0 = time.perf_counter()
        classifier.predict([text])
        single.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for start in range(0, len(texts), args.batch_size):
        classifier.predict(texts[start : start + args.batch_size])
    batch_s = time.perf_counter() - t0
    single.sort()
    result = {
        "stage": str(args.stage),
        "import_s": round(import_s, 2),
        "load_s": round(load_s, 2),
        "one_text_p50_ms": round(1000 * single[len(single) // 2], 1),
        "one_text_p95_ms": round(1000 * single[int(len(single) * 0.95)], 1),
        "texts": len(texts),
        "texts_per_s": round(len(texts) / batch_s, 1),
        "peak_rss_mb": round(peak_rss_mb()),
        "threads": __import__("torch").get_num_threads(),
        "precision": args.precision,
        "device": str(classifier.model.device),
        "layer_dtype": str(classifier.model.encoder.layer_dtype or "float32"),
        "cpu_steal_pct": steal.percent(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
