"""Writes tests/data/index-v2/: a tiny index in storage format v2, made by unimir as of main a9dee09 (2026-12-02).

Run with that revision's sources first on the path (``PYTHONPATH=/path/to/old/src python tests/data/make_index_v2.py``);
``test_storage.test_format_v2_index_opens`` checks that today's code opens it and finds what it recorded.
Two segments, one deleted item, a quantizer-only generative model (int16 codes), d = 16.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from unimir import Index
from unimir.data.records import Candidate, Modality
from unimir.encoders import Features
from unimir.generator import GenerativeRetriever
from unimir.quantizer import QuantizerConfig, QuantizerTrainConfig, SemanticQuantizer, TrainingPairs

OUT = Path(__file__).resolve().parent / "index-v2"
D, N = 16, 48


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    codes = np.arange(N) % 3
    image, text = unit(rng.standard_normal((N, D))), unit(rng.standard_normal((N, D)))
    image[codes == 1] = 0
    text[codes == 0] = 0
    image, text = image.astype(np.float16).astype(np.float32), text.astype(np.float16).astype(np.float32)
    cands = [Candidate(f"v2:{i}", Modality.from_code(int(c)), None if c == 0 else f"Old text {i}.",
                       None if c == 1 else f"img/{i}.jpg") for i, c in enumerate(codes)]
    feats = Features(image, text, codes != 1, codes != 0)
    shutil.rmtree(OUT, ignore_errors=True)
    index = Index.build(cands[:32], OUT, root=OUT.parent, encoder="v2-fixture-16", features=feats[:32])
    index.add_features(cands[32:], feats[32:], out=OUT)
    index.delete(["v2:5"])
    q = unit(rng.standard_normal((4, D)))
    n = len(q)
    queries = Features(np.zeros_like(q), q, np.zeros(n, bool), np.ones(n, bool))
    positives = np.arange(n * 8) % N
    pq = unit(index.fuse(index.features_at(positives)) + 0.3 * rng.standard_normal((len(positives), D)))
    pairs = TrainingPairs(Features(np.zeros_like(pq), pq, np.zeros(len(pq), bool), np.ones(len(pq), bool)),
                          index.features, codes.astype(np.int64), positives, codes[positives].astype(np.int64))
    retriever = GenerativeRetriever(SemanticQuantizer(QuantizerConfig(dim=D, hidden=16, levels=2, codebook_size=4)))
    retriever.fit_quantizer(pairs, QuantizerTrainConfig(epochs=2, kmeans_init_samples=64, batch_size=32),
                            progress=False, log=False)
    retriever.index(index.features, codes.astype(np.int64))
    index.generative = retriever
    index.save()
    expected = {"queries": q.tolist(), "parts_rows": [0, 7, 40], "image": image[[0, 7, 40]].tolist(),
                "text": text[[0, 7, 40]].tolist(), "codes": np.asarray(retriever.codes).tolist()}
    for mode in ("dense", "quantize"):
        found = index.search_features(queries, [None] * n, 5, mode=mode)
        expected[mode] = [[r.indices.tolist(), r.scores.tolist()] for r in found]
    (OUT.parent / "index-v2-expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main()
