"""Embedding throughput (MiniLMEmbedder vs raw SentenceTransformer.encode) and upsert rate.

Both embedders encode the same realistic run summaries in the same process, after one
warm-up, so the difference is the wrapper's own cost. The upsert figure is
``VectorStore.upsert`` (merge_insert on run_id) of fresh rows into a local directory, then
the same rows again (all matched: the re-run case).

    .venv/bin/python bench/vectorize_speed.py --texts 2000 --batch-sizes 64 128
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neuralops.embedding import MiniLMEmbedder, run_summary
from neuralops.vectorstore import VectorStore

PLAYBOOKS = {
    "KubePodCrashLooping": ("restart-deployment", "Pod {svc} is restarting repeatedly"),
    "KubePersistentVolumeFillingUp": ("expand-volume", "Volume for {svc} is {n}% full"),
    "HighErrorRate": ("rollback-release", "{svc} returns 5xx on {n}% of requests"),
    "NodeMemoryPressure": ("drain-node", "Node hosting {svc} is under memory pressure"),
    "HighLatencyP99": ("scale-out", "p99 latency of {svc} is {n}00 ms"),
}
ERRORS = [
    "rollout timed out waiting for {n} replicas",
    "image pull failed: manifest unknown for {svc}:v{n}",
    "admission webhook denied the request: quota exceeded in namespace",
    "",
]


def synthetic_records(n: int, seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    alerts = list(PLAYBOOKS)
    records = []
    for i in range(n):
        alert = alerts[rng.integers(len(alerts))]
        playbook, summary = PLAYBOOKS[alert]
        svc = f"svc{rng.integers(60)}"
        number = int(rng.integers(2, 99))
        error = ERRORS[rng.integers(len(ERRORS))].format(n=number, svc=svc)
        failed = bool(error)
        records.append(
            {
                "run_id": f"run-{i}",
                "wpk_id": playbook,
                "status": "failed" if failed else "succeeded",
                "duration_ms": int(rng.integers(500, 120_000)),
                "inputs": {
                    "incident": {
                        "alert": alert,
                        "labels": {
                            "namespace": f"ns{rng.integers(12)}",
                            "service": svc,
                            "severity": "critical" if rng.random() < 0.3 else "warning",
                        },
                        "summary": summary.format(svc=svc, n=number),
                    }
                },
                "outputs": {"error": error} if failed else {"message": "remediation applied"},
                "node_logs": [
                    {
                        "name": "apply",
                        "status": "failed" if failed else "succeeded",
                        "message": error or "ok",
                    },
                ],
                "created_at": "2024-05-01T10:00:00Z",
                "updated_at": "2024-05-01T10:01:00Z",
            }
        )
    return records


def embedding_speed(n_texts: int, batch_sizes: list[int]) -> list[tuple[str, int, float]]:
    texts = [run_summary(r) for r in synthetic_records(n_texts)]
    print(
        f"{len(texts)} summaries, {len(set(texts))} distinct, "
        f"mean {np.mean([len(t) for t in texts]):.0f} chars; torch threads "
        f"{__import__('torch').get_num_threads()}",
        flush=True,
    )
    results = []
    for batch in batch_sizes:
        embedder = MiniLMEmbedder(batch_size=batch)
        model = embedder.model
        model.encode(texts[:batch], batch_size=batch)  # warm-up
        start = time.perf_counter()
        model.encode(texts, batch_size=batch, normalize_embeddings=True, show_progress_bar=False)
        raw = len(texts) / (time.perf_counter() - start)
        start = time.perf_counter()
        embedder.embed(texts)
        wrapped = len(texts) / (time.perf_counter() - start)
        for label, rate in (("SentenceTransformer.encode", raw), ("MiniLMEmbedder.embed", wrapped)):
            results.append((label, batch, rate))
            print(f"batch {batch:>4} {label:<28} {rate:7.1f} texts/s", flush=True)
    return results


def upsert_speed(n_rows: int, chunk: int) -> tuple[float, float]:
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(n_rows, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [
        {
            "run_id": f"run-{i}",
            "wpk_id": "restart-deployment",
            "status": "failed",
            "summary": f"summary {i}",
            "content_hash": f"{i:064x}",
            "model": "m@1",
            "vector": vectors[i],
            "created_at": "2024-05-01T10:00:00Z",
            "updated_at": "2024-05-01T10:01:00Z",
        }
        for i in range(n_rows)
    ]
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        store = VectorStore(os.path.join(tmp, "lancedb"))
        for _ in range(2):  # fresh inserts, then the same rows again (all matched)
            start = time.perf_counter()
            for i in range(0, n_rows, chunk):
                store.upsert(rows[i : i + chunk])
            rates.append(n_rows / (time.perf_counter() - start))
        assert store.count() == n_rows
    print(
        f"upsert {n_rows} rows in batches of {chunk}: insert {rates[0]:.0f} rows/s, "
        f"re-upsert {rates[1]:.0f} rows/s",
        flush=True,
    )
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=512, help="rows per upsert (vectorize batch)")
    parser.add_argument("--skip-embedding", action="store_true")
    args = parser.parse_args()
    upsert_speed(args.rows, args.chunk)
    if not args.skip_embedding:
        embedding_speed(args.texts, args.batch_sizes)


if __name__ == "__main__":
    main()
