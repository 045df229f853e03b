"""Brute force vs ANN index on LanceDB: query latency and recall@10 at several table sizes.

Chooses ``neuralops.vectorstore.INDEX_MIN_ROWS``. The vectors are synthetic 384-d,
L2-normalised, drawn around a few hundred centres (run summaries cluster by playbook and
alert, so uniform noise would understate what an IVF index can do); queries are fresh
draws from the same mixture. Recall@10 is measured against exact cosine neighbours computed
with numpy. Each configuration is queried ``--queries`` times after a warm-up; the
figures are the median and p95 per query.

    .venv/bin/python bench/vector_index.py --sizes 10000 50000 100000
    .venv/bin/python bench/vector_index.py --report reports/vectorize.md   # write the section
    .venv/bin/python bench/vector_index.py --fold 100000 --report reports/vectorize.md

``--fold N``: index upkeep instead. An index built on N rows, then new rows added as hourly
refreshes would (1,000, then up to ``FOLD_FRACTION`` of the table): latency and recall@10
with the new rows outside the index (LanceDB scans them exactly), the time ``optimize()``
takes to fold them in, and latency and recall after it.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import IvfPq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neuralops.vectorstore import FOLD_FRACTION, index_config, search_params

DIM = 384
K = 10


def mixture(rng: np.random.Generator, n: int, centres: np.ndarray, spread: float) -> np.ndarray:
    picks = rng.integers(0, len(centres), n)
    vectors = centres[picks] + rng.normal(0, spread, (n, DIM)).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def table_for(db: lancedb.DBConnection, name: str, vectors: np.ndarray) -> lancedb.table.Table:
    ids = pa.array([f"run-{i}" for i in range(len(vectors))])
    flat = pa.array(vectors.reshape(-1))
    data = pa.table({"run_id": ids, "vector": pa.FixedSizeListArray.from_arrays(flat, DIM)})
    return db.create_table(name, data=data, mode="overwrite")


def exact_top(vectors: np.ndarray, queries: np.ndarray) -> list[set[str]]:
    scores = queries @ vectors.T
    top = np.argpartition(-scores, K, axis=1)[:, :K]
    return [{f"run-{i}" for i in row} for row in top]


def time_queries(table, queries: np.ndarray, configure) -> tuple[list[float], list[set[str]]]:
    for q in queries[:3]:  # warm-up: first queries open files and load the index
        configure(table.search(q).distance_type("cosine").limit(K)).to_arrow()
    latencies, found = [], []
    for q in queries:
        start = time.perf_counter()
        result = configure(table.search(q).distance_type("cosine").limit(K).select(["run_id"]))
        ids = result.to_arrow().column("run_id").to_pylist()
        latencies.append((time.perf_counter() - start) * 1000)
        found.append(set(ids))
    return latencies, found


def recall(found: list[set[str]], truth: list[set[str]]) -> float:
    return sum(len(f & t) for f, t in zip(found, truth, strict=True)) / (K * len(truth))


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def bench(sizes: list[int], n_queries: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (300, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        db = lancedb.connect(tmp)
        for size in sizes:
            vectors = mixture(rng, size, centres, spread=0.04)
            queries = mixture(rng, n_queries, centres, spread=0.04)
            truth = exact_top(vectors, queries)
            configs = [
                ("brute force", None, lambda q: q.bypass_vector_index()),
                ("IVF_HNSW_SQ (store default)", index_config(size), search_params),
                (
                    "IVF_PQ sqrt(n) parts, 48 subvec, refine 5",
                    IvfPq(
                        distance_type="cosine",
                        num_partitions=max(1, int(math.sqrt(size))),
                        num_sub_vectors=48,
                    ),
                    lambda q: q.nprobes(20).refine_factor(5),
                ),
            ]
            table = table_for(db, f"t{size}", vectors)
            built: object = None
            for label, config, configure in configs:
                build_s = 0.0
                if config is not None and config is not built:
                    start = time.perf_counter()
                    table.create_index("vector", config=config, replace=True)
                    build_s = time.perf_counter() - start
                    built = config
                lat, found = time_queries(table, queries, configure)
                row = {
                    "rows": size,
                    "method": label,
                    "build_s": build_s,
                    "median_ms": statistics.median(lat),
                    "p95_ms": p95(lat),
                    "recall": recall(found, truth),
                }
                rows.append(row)
                print(
                    f"{size:>7} {label:<42} build {build_s:6.1f}s  median {row['median_ms']:6.2f}ms"
                    f"  p95 {row['p95_ms']:6.2f}ms  recall@10 {row['recall']:.3f}",
                    flush=True,
                )
            db.drop_table(f"t{size}")
    return rows


def markdown(rows: list[dict], n_queries: int) -> str:
    lines = [
        "## ANN index threshold (bench/vector_index.py)",
        "",
        f"Synthetic 384-d normalised vectors (300-centre mixture), {n_queries} queries per "
        "configuration, k=10, cosine; recall@10 against exact numpy neighbours.",
        "",
        "| rows | method | build s | median ms | p95 ms | recall@10 |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        build = f"{r['build_s']:.1f}" if r["build_s"] else "-"
        lines.append(
            f"| {r['rows']:,} | {r['method']} | {build} | {r['median_ms']:.2f} | "
            f"{r['p95_ms']:.2f} | {r['recall']:.3f} |"
        )
    return "\n".join(lines)


def fold_bench(size: int, n_queries: int, seed: int) -> list[dict]:
    """Recall and latency before and after folding new rows into an existing index."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (300, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    batch = int(FOLD_FRACTION * size)
    vectors = mixture(rng, size + 1000 + batch, centres, spread=0.04)
    queries = mixture(rng, n_queries, centres, spread=0.04)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        table = table_for(lancedb.connect(tmp), "fold", vectors[:size])
        start = time.perf_counter()
        table.create_index("vector", config=index_config(size), replace=True)
        build_s = time.perf_counter() - start
        have = size

        def measure(label: str, seconds: float) -> None:
            stats = table.index_stats(table.list_indices()[0].name)
            lat, found = time_queries(table, queries, search_params)
            row = {
                "step": label,
                "rows": have,
                "unindexed": stats.num_unindexed_rows,
                "seconds": seconds,
                "median_ms": statistics.median(lat),
                "p95_ms": p95(lat),
                "recall": recall(found, exact_top(vectors[:have], queries)),
            }
            rows.append(row)
            print(row, flush=True)

        def add(n: int) -> None:
            nonlocal have
            ids = pa.array([f"run-{i}" for i in range(have, have + n)])
            flat = pa.array(vectors[have : have + n].reshape(-1))
            table.add(pa.table({"run_id": ids, "vector": flat_list(flat)}))
            have += n

        def fold() -> float:
            start = time.perf_counter()
            table.optimize()
            return time.perf_counter() - start

        measure(f"index built on {size:,} rows", build_s)
        add(1000)
        measure(f"1,000 new rows ({1000 / have:.1%} of the table), not folded", 0.0)
        measure("... folded at once (`optimize()`, as every refresh did before)", fold())
        add(batch)
        measure(f"{batch:,} new rows ({FOLD_FRACTION:.0%}), not folded", 0.0)
        measure(f"... folded (`optimize()` once they pass {FOLD_FRACTION:.0%})", fold())
    return rows


def flat_list(flat: pa.Array) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(flat, DIM)


def fold_markdown(rows: list[dict], n_queries: int) -> str:
    lines = [
        "## ANN index upkeep: folding new rows in (bench/vector_index.py --fold)",
        "",
        f"Command: `flock /tmp/neuralops-bench.lock .venv/bin/python bench/vector_index.py "
        f"--fold {rows[0]['rows']} --report reports/vectorize.md`. The store's index "
        f"(IVF_HNSW_SQ, `index_config`) on synthetic 384-d vectors (300-centre mixture), "
        f"{n_queries} queries, k=10, cosine, the store's search parameters; recall@10 against "
        "exact numpy neighbours over all rows (new ones included). `vectorstore.ensure_index` "
        f"folds only once the rows outside the index pass {FOLD_FRACTION:.0%} of the table "
        "(`FOLD_FRACTION`); until then LanceDB scans them exactly beside the index.",
        "",
        "| step | rows | outside the index | seconds | median ms | p95 ms | recall@10 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        secs = f"{r['seconds']:.1f}" if r["seconds"] else "-"
        lines.append(
            f"| {r['step']} | {r['rows']:,} | {r['unindexed']:,} | {secs} | "
            f"{r['median_ms']:.2f} | {r['p95_ms']:.2f} | {r['recall']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 50_000, 100_000])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--report", type=Path, help="write the section into this markdown file")
    parser.add_argument("--fold", type=int, metavar="N", help="index upkeep on N rows instead")
    args = parser.parse_args()
    if args.fold:
        text = fold_markdown(fold_bench(args.fold, args.queries, args.seed), args.queries)
        section = "vector_index_fold"
    else:
        text = markdown(bench(args.sizes, args.queries, args.seed), args.queries)
        section = "vector_index"
    print(text)
    if args.report:
        from _report import write_section

        write_section(args.report, section, text, title="Vectorize")


if __name__ == "__main__":
    main()
