"""FaissStore.reconstruct (the reads behind generative re-ranking) against the former per-partition, per-row loop.

8 segments x 3 modality partitions of SQfp16 vectors (480,000 rows, d = 768), random shortlists of 500 / 5,000 /
50,000 rows; prints milliseconds of each and checks they return the same vectors. Run: python -m
benchmarks.store_reconstruct (a few minutes to build; timings are wall-clock and depend on the machine's load)."""
import time

import faiss
import numpy as np

from unimir.index import dense
from unimir.index.dense import _Partition


def main() -> None:
    d, per_part = 768, 20000
    store = dense.FaissStore(d, "flat")
    rng = np.random.default_rng(0)
    for s in range(8):
        parts = []
        for code in range(3):
            idx = faiss.index_factory(d, "SQfp16", faiss.METRIC_INNER_PRODUCT)
            x = rng.standard_normal((per_part, d)).astype(np.float32)
            idx.train(x[:100])
            idx.add(x)
            parts.append(_Partition(code, idx, (np.arange(per_part) * 3 + code).astype(np.int32), s * per_part * 3))
        store.segments[f"s{s}"] = parts
    n = per_part * 24
    def old(rows):  # the implementation before 2026-12-02, kept as the reference
        out = np.zeros((len(rows), d), np.float32)
        for parts in store.segments.values():
            for p in parts:
                local = rows - p.first_row
                pos = np.searchsorted(p.rows, local).clip(max=p.ntotal - 1)
                hit = (local >= 0) & (np.asarray(p.rows[pos]) == local)
                if hit.any():
                    out[hit] = np.stack([p.index.reconstruct(int(i)) for i in pos[hit]])
        return out
    for k in (500, 5000, 50000):
        rows = rng.choice(n, k, replace=False)
        t = time.perf_counter()
        a = old(rows)
        t_old = time.perf_counter() - t
        t = time.perf_counter()
        b = store.reconstruct(rows)
        t_new = time.perf_counter() - t
        assert np.array_equal(a, b)
        print(f"{k} rows of {n}: old {t_old*1e3:.1f} ms, new {t_new*1e3:.1f} ms")


if __name__ == "__main__":
    main()
