"""``unimir train``: fit the generative retriever of an index from M-BEIR training queries.

Stage ``quantizer`` trains the combiner and codebooks and codes every candidate; stage ``generator`` trains the
ID generator against those codes; ``all`` does both. Everything is stored in the index directory (atomically).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import health
from .data.mbeir import InstructionTable, QrelsTable, read_qrels, read_queries
from .data.problems import Problems
from .encoders import EmbeddingCache
from .errors import InvalidInputError
from .generator import GenerativeRetriever, GeneratorConfig, GeneratorTrainConfig
from .index import Index
from .quantizer import QuantizerConfig, QuantizerTrainConfig, SemanticQuantizer, TrainingPairs
from .queries import load_instructions, mbeir_root, prepare_queries

STAGES = ("quantizer", "generator", "index", "all")


@dataclass
class TrainReport:
    pairs: int
    stages: list[str]
    quantizer: Any = None
    generator: Any = None
    collisions: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def training_pairs(index: Index, query_files: Sequence["str | Path"], *, qrels: Sequence["str | Path"] = (),
                   root: "str | Path | None" = None, instructions: "str | Path | InstructionTable | None" = None,
                   seed: int = 0, progress: bool = False, problems: Problems | None = None) -> TrainingPairs:
    """Encode training queries (one row per instruction paraphrase) and pair each with every positive in the pool.

    Using every paraphrase and every positive as its own pair is the epoch-free form of redrawing them per epoch
    (genius-method.md §8.10). Positives absent from the pool are skipped.
    """
    problems = problems if problems is not None else Problems()
    relevant = QrelsTable() if qrels else None
    for path in qrels:
        relevant.merge(read_qrels(path, problems))
    feats, query_rows, positive_rows, targets = [], [], [], []
    offset = 0
    cache = EmbeddingCache()
    try:
        for qfile in map(Path, query_files):
            data_root = Path(root) if root else mbeir_root(qfile) or index.root or qfile.parent
            prepared = prepare_queries(read_queries(qfile, problems), index, data_root=data_root,
                                       instructions=load_instructions(instructions, data_root, seed),
                                       relevant=relevant, all_instructions=True, problems=problems,
                                       source=str(qfile))
            f, ok = index.encoder.encode(prepared.items, "query", progress=progress, cache=cache, problems=problems)
            prepared = prepared.keep(ok)
            rows_of = index.rows_of({d for rel in prepared.relevant for d in rel})  # one batched lookup
            for i, (target, rel) in enumerate(zip(prepared.targets, prepared.relevant)):
                for did in sorted(rel):
                    row = rows_of.get(did)
                    if row is not None:
                        query_rows.append(offset + i)
                        positive_rows.append(row)
                        targets.append(target.code if target else int(index.modality_codes[row]))
            feats.append(f)
            offset += len(f)
    finally:
        cache.close()
    if not positive_rows:
        raise InvalidInputError("no training pair: none of the queries' positives is in this index")
    from .encoders import Features

    queries = Features.concat(feats, index.manifest.dim)[np.asarray(query_rows)]
    return TrainingPairs(queries, index.features, index.modality_codes.astype(np.int64), np.asarray(positive_rows),
                         np.asarray(targets))


def train(index: Index, pairs: TrainingPairs | None, *, stage: str = "all", quantizer: str | None = None,
          quantizer_config: QuantizerTrainConfig | None = None, generator: GeneratorConfig | None = None,
          generator_config: GeneratorTrainConfig | None = None, progress: bool = False,
          checkpoint_dir: "str | Path | None" = None, resume: bool = False, save: bool = True,
          log: bool = True, report_to_stderr: bool = True) -> TrainReport:
    """Train the index's generative retriever in place and save the index.

    ``quantizer`` is a spec string such as ``"M3+RQ3x64"`` (default: the QuantizerConfig defaults);
    ``checkpoint_dir`` keeps resumable checkpoints of both stages (``resume=True`` continues from them).
    ``generator_config.val_share`` of the training targets are held out of both stages as unseen validation
    targets: they drive the generator's early stopping and the health reports (``unimir.health``), which are
    printed to stderr (``report_to_stderr``) and stored with the model; ``log`` prints periodic progress lines.
    Stage ``index`` (no pairs needed) is the index-time
    fine-tune of ``GenerativeRetriever.refresh``: it teaches the generator items added since it was trained.
    """
    if stage not in STAGES:
        raise InvalidInputError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")
    if pairs is None and stage != "index":
        raise InvalidInputError(f"stage {stage!r} needs training pairs")
    gen_config = generator_config or GeneratorTrainConfig()
    train_pairs, val_pairs = (health.split_validation(pairs, gen_config.val_share, gen_config.seed)
                              if pairs is not None else (None, None))
    report = TrainReport(len(pairs) if pairs is not None else 0, [])
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    if ckpt:
        ckpt.mkdir(parents=True, exist_ok=True)
    # stage summaries and health reports are results: always printed; ``log`` is the periodic progress lines
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if report_to_stderr else (lambda text: None)  # noqa: E731
    retriever = index.generative
    if stage in ("quantizer", "all"):
        dim = index.manifest.dim
        config = QuantizerConfig.from_spec(quantizer, dim=dim) if quantizer else QuantizerConfig(dim=dim)
        retriever = GenerativeRetriever(SemanticQuantizer(config))
        say(f"[quantizer] training {config.spec} on {len(train_pairs)} pairs "
            f"({0 if val_pairs is None else len(val_pairs)} held back for validation)")
        report.quantizer = retriever.fit_quantizer(train_pairs, quantizer_config, progress=progress,
                                                   checkpoint_path=ckpt / "quantizer" if ckpt else None,
                                                   resume=resume, log=log)
        report.collisions = retriever.index(index.features, index.modality_codes)
        index.generative = retriever
        retriever.health = {"quantizer": health.quantizer_report(index, val_pairs)}
        say(health.format_report("quantizer", retriever.health["quantizer"]))
        report.stages.append("quantizer")
    if stage in ("generator", "all"):
        if retriever is None:
            raise InvalidInputError("train the quantizer first (--stage quantizer or all)")
        index.generative = retriever
        val_small = health.sample(val_pairs)
        validate = (lambda: health.recall(index, val_small, "generative")) if val_small is not None else None
        say(f"[generator] training on {len(train_pairs)} pairs"
            + (f" + {len(index)} index-time pool pairs" if gen_config.pool_pairs else ""))
        report.generator = retriever.fit_generator(train_pairs, gen_config, generator, progress=progress,
                                                   checkpoint_path=ckpt / "generator" if ckpt else None,
                                                   resume=resume, pool=(index.features, index.modality_codes),
                                                   validate=validate, log=log)
        retriever.health["generator"] = health.generator_report(index, train_pairs, val_pairs)
        say(health.format_report("generator", retriever.health["generator"]))
        report.stages.append("generator")
    if stage == "index":
        if retriever is None or retriever.generator is None:
            raise InvalidInputError("stage 'index' needs a trained generator: run 'unimir train' first")
        report.extra["refresh"] = retriever.refresh(index.features, log=log)
        say(f"[index] taught the generator {report.extra['refresh']['rows']} items "
            f"(with {report.extra['refresh']['replay']} replayed) in {report.extra['refresh']['steps']} steps")
        report.stages.append("index")
    index.generative = retriever
    if save and index.path is not None:
        index.save()
    return report
