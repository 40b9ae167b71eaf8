"""``unimir convert genius``: GENIUS's stage-1 quantizer and stage-2 ID generator into a unimir index
(seed-checkpoints.md §2-3).

* **Combiner.** GENIUS concatenates the projected parts text first, unimir image first. The two layers that read
  the concatenation (``combiner_layer`` and ``dynamic_scalar.0``) get their input columns swapped, which makes
  unimir's combiner compute exactly GENIUS's function; every other tensor is copied.
* **Quantizer.** Level 0 (stored twice: ``vq._codebook`` and ``residual_rq.layers.0._codebook``) and levels 1..L
  are ``EuclideanCodebook`` buffers ``[1, K, d]``; ``residual_rq.mlps.*`` and CLIP copies (``clip_model.*``) are
  ignored. GENIUS learnt level 0 by k-means, so its 3 codes carry no fixed modality: each is mapped onto unimir's
  exact modality code by the dominant modality of the pool items that take it (or ``modality_map``), the
  codewords and the generator's 3 level-0 token rows are permuted accordingly, and the mapping and its purity are
  reported. unimir then assigns c0 = modality exactly, as it always does.
* **Generator.** ``id_generator.*`` (T5 with a zero-layer encoder; tied embeddings) and ``embed_projector.0`` map
  onto ``IDGenerator``'s ``t5.*`` and ``prefix``; its softmax is the full-vocabulary one GENIUS decodes with.
Shapes (d, hidden, levels, K, layers, heads, prefix length) are read from the tensors.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError
from ..quantizer.kmeans import squared_distances
from .pth import CheckpointError, read_state_dict

MODALITY_NAMES = ("image", "text", "image,text")  # unimir's level-0 codes 0, 1, 2


def _drop_ignorable(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Remove CLIP copies and unused RQ MLPs; returns (rest, how many were dropped)."""
    keep = {k: v for k, v in state.items() if not re.match(r"^(?:quantizer\.)?(?:clip_model\.|residual_rq\.mlps\.)", k)}
    return keep, len(state) - len(keep)


def split_quantizer(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The stage-1 tensors (``encoder.*``, ``vq.*``, ``residual_rq.*``) found under ``prefix``, prefix removed."""
    out = {}
    for key, value in state.items():
        if key.startswith(prefix) and key[len(prefix):].split(".", 1)[0] in ("encoder", "vq", "residual_rq"):
            out[key[len(prefix):]] = value
    return out


@dataclass
class Level0Mapping:
    """unimir modality code m -> GENIUS level-0 code ``genius_code[m]``, learnt from the pool (or given)."""

    genius_code: tuple[int, int, int]
    counts: list[list[int]]  # [GENIUS code][unimir modality]: pool items
    given: bool = False

    @property
    def purity(self) -> float:
        total = sum(map(sum, self.counts))
        agree = sum(self.counts[g][m] for m, g in enumerate(self.genius_code))
        return agree / total if total else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"genius_code_of": dict(zip(MODALITY_NAMES, self.genius_code)), "counts": self.counts,
                "purity": self.purity, "given": self.given, "option": ",".join(map(str, self.genius_code))}

    def describe(self) -> str:
        parts = []
        for m, g in enumerate(self.genius_code):
            n = sum(self.counts[g])
            share = f"{self.counts[g][m] / n:.1%} of its {n} pool items" if n else "no pool items"
            parts.append(f"{MODALITY_NAMES[m]} <- GENIUS code {g} ({share})")
        how = "given" if self.given else "learnt from the pool"
        return (f"level-0 mapping ({how}; --modality-map {','.join(map(str, self.genius_code))}): "
                + "; ".join(parts) + f"; purity {self.purity:.1%}")


def learn_level0(genius_codes: np.ndarray, modalities: np.ndarray, given: "str | tuple | None" = None
                 ) -> Level0Mapping:
    """Choose the permutation of GENIUS's 3 level-0 codes that agrees with most pool items' modalities."""
    counts = np.zeros((3, 3), np.int64)
    np.add.at(counts, (genius_codes.astype(np.int64), modalities.astype(np.int64)), 1)
    if given is not None:
        perm = tuple(int(x) for x in (given.split(",") if isinstance(given, str) else given))
        if sorted(perm) != [0, 1, 2]:
            raise InvalidInputError(f"--modality-map must be a permutation of 0,1,2 (GENIUS codes of image, text, "
                                    f"image+text), got {given!r}")
        return Level0Mapping(perm, counts.tolist(), given=True)
    best = max(itertools.permutations(range(3)), key=lambda p: (sum(counts[g, m] for m, g in enumerate(p)),
                                                                  tuple(-x for x in p)))
    return Level0Mapping(tuple(best), counts.tolist())


def _codebook(q: dict, name: str) -> dict[str, torch.Tensor]:
    found = {part: q.get(f"{name}._codebook.{part}") for part in ("embed", "cluster_size", "embed_avg", "initted")}
    if found["embed"] is None:
        raise CheckpointError(f"missing {name}._codebook.embed")
    return found


def quantizer_from_state(q: dict[str, torch.Tensor], where: str):
    """A ``SemanticQuantizer`` holding GENIUS's combiner and codebooks (level 0 still in GENIUS's order, in
    ``modality_codebook``), plus GENIUS's level-0 EMA state for the later permutation."""
    from ..quantizer import QuantizerConfig, SemanticQuantizer

    levels = sorted({int(m.group(1)) for k in q if (m := re.match(r"^residual_rq\.layers\.(\d+)\._codebook\.", k))})
    if not levels or levels != list(range(len(levels))):
        raise CheckpointError(f"{where}: residual_rq.layers.* codebooks missing or not numbered 0..n ({levels})")
    level0 = _codebook(q, "residual_rq.layers.0")
    if "vq._codebook.embed" in q and not torch.equal(q["vq._codebook.embed"], level0["embed"]):
        raise CheckpointError(f"{where}: vq._codebook and residual_rq.layers.0._codebook differ; GENIUS registers "
                              "one module twice, so they must be equal")
    books = [_codebook(q, f"residual_rq.layers.{i}") for i in levels[1:]]
    dim = int(level0["embed"].shape[-1])
    if level0["embed"].shape[-2] != 3:
        raise CheckpointError(f"{where}: level 0 has {level0['embed'].shape[-2]} codes; GENIUS's modality level has 3")
    ks = {int(b["embed"].shape[-2]) for b in books}
    if len(ks) != 1:
        raise CheckpointError(f"{where}: levels 1.. have different codebook sizes {sorted(ks)}")
    t_w = q.get("encoder.text_projection_layer.weight")
    if t_w is None:
        raise CheckpointError(f"{where}: missing the combiner (encoder.text_projection_layer.weight)")
    hidden = int(t_w.shape[0])
    if tuple(q["encoder.combiner_layer.weight"].shape) != (2 * hidden, 2 * hidden):
        raise CheckpointError(f"{where}: combiner_layer is {tuple(q['encoder.combiner_layer.weight'].shape)}; unimir's "
                              f"combiner needs a square layer of twice the projection width ({2 * hidden})")
    config = QuantizerConfig(dim=dim, hidden=hidden, levels=len(books), codebook_size=ks.pop())
    quantizer = SemanticQuantizer(config)
    net = quantizer.net

    def swap_halves(w: torch.Tensor) -> torch.Tensor:  # GENIUS reads [text, image]; unimir [image, text]
        return torch.cat([w[:, hidden:], w[:, :hidden]], dim=1)

    combiner = {
        "image_proj.weight": q["encoder.image_projection_layer.weight"],
        "image_proj.bias": q["encoder.image_projection_layer.bias"],
        "text_proj.weight": t_w, "text_proj.bias": q["encoder.text_projection_layer.bias"],
        "mix.weight": swap_halves(q["encoder.combiner_layer.weight"]), "mix.bias": q["encoder.combiner_layer.bias"],
        "out.weight": q["encoder.output_layer.weight"], "out.bias": q["encoder.output_layer.bias"],
        "gate_hidden.weight": swap_halves(q["encoder.dynamic_scalar.0.weight"]),
        "gate_hidden.bias": q["encoder.dynamic_scalar.0.bias"],
        "gate.weight": q["encoder.dynamic_scalar.3.weight"], "gate.bias": q["encoder.dynamic_scalar.3.bias"]}
    try:
        net.combiner.load_state_dict({k: v.float() for k, v in combiner.items()}, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: combiner tensors do not fit ({exc})") from None
    rq = net.rq
    with torch.no_grad():
        rq.modality_codebook.copy_(level0["embed"].reshape(3, dim))
        for i, book in enumerate(books):
            rq.codebooks[i].copy_(book["embed"].reshape(-1, dim))
            if book["cluster_size"] is not None:
                rq.ema_count[i].copy_(book["cluster_size"].reshape(-1))
            if book["embed_avg"] is not None:
                rq.ema_sum[i].copy_(book["embed_avg"].reshape(-1, dim))
        rq.initialized.fill_(True)
    used = {f"encoder.{n}" for n in ("text_projection_layer.weight", "text_projection_layer.bias",
                                      "image_projection_layer.weight", "image_projection_layer.bias",
                                      "combiner_layer.weight", "combiner_layer.bias", "output_layer.weight",
                                      "output_layer.bias", "dynamic_scalar.0.weight", "dynamic_scalar.0.bias",
                                      "dynamic_scalar.3.weight", "dynamic_scalar.3.bias")}
    used |= {k for k in q if k.startswith(("vq._codebook.", "residual_rq.layers."))}
    unexpected = sorted(set(q) - used)
    if unexpected:
        raise CheckpointError(f"{where}: unexpected quantizer keys {unexpected[:20]}")
    return quantizer, level0


def generator_from_state(state: dict[str, torch.Tensor], quantizer, where: str):
    """An ``IDGenerator`` (full-vocabulary softmax) holding GENIUS's T5 and prefix projector, level 0 in GENIUS's
    order."""
    from ..generator import GeneratorConfig, IDGenerator
    from ..quantizer.checkpoint import load_tensors_strict

    t5 = {k[len("id_generator."):]: v for k, v in state.items() if k.startswith("id_generator.")}
    proj = {k[len("embed_projector.0."):]: v for k, v in state.items() if k.startswith("embed_projector.0.")}
    other = sorted(k for k in state if not k.startswith(("id_generator.", "embed_projector.0.")))
    if other:
        raise CheckpointError(f"{where}: unexpected keys {other[:20]}")
    if "shared.weight" not in t5 or "weight" not in proj:
        raise CheckpointError(f"{where}: missing id_generator.shared.weight or embed_projector.0.weight")
    shared = t5["shared.weight"]
    for alias in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
        if alias in t5:
            if not torch.equal(t5.pop(alias), shared):
                raise CheckpointError(f"{where}: id_generator.{alias} differs from shared.weight; GENIUS ties them")
    d_model = int(shared.shape[1])
    layers = len({m.group(1) for k in t5 if (m := re.match(r"^decoder\.block\.(\d+)\.", k))})
    rel = t5.get("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    if rel is None or layers == 0:
        raise CheckpointError(f"{where}: no decoder blocks / relative attention bias under id_generator.decoder")
    if int(rel.shape[0]) != 32:
        raise CheckpointError(f"{where}: {rel.shape[0]} relative-position buckets; unimir's generator uses T5's 32")
    heads = int(rel.shape[1])
    if int(t5["decoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]) != d_model:
        raise CheckpointError(f"{where}: attention inner width differs from d_model; unimir needs heads x d_kv = "
                              "d_model")
    qc = quantizer.config
    config = GeneratorConfig(dim=int(proj["weight"].shape[1]), levels=qc.levels, codebook_size=qc.codebook_size,
                             num_layers=layers, d_model=d_model, num_heads=heads,
                             d_ff=int(t5["decoder.block.0.layer.2.DenseReluDense.wi.weight"].shape[0]),
                             prefix_len=int(proj["weight"].shape[0]) // d_model, softmax="full")
    if config.dim != qc.dim or config.prefix_len * d_model != proj["weight"].shape[0]:
        raise CheckpointError(f"{where}: embed_projector.0 is {tuple(proj['weight'].shape)}, not [P x {d_model}, "
                              f"{qc.dim}]")
    if shared.shape[0] != config.vocab.size:
        raise CheckpointError(f"{where}: vocabulary of {shared.shape[0]} tokens, but 3 specials + 3 modality codes + "
                              f"{qc.levels} x {qc.codebook_size} codes make {config.vocab.size}")
    model = IDGenerator(config)
    tensors = {f"t5.{k}": v.float() for k, v in t5.items()}
    tensors.update({f"prefix.{k}": v.float() for k, v in proj.items()})
    load_tensors_strict(model, tensors, where)
    return model.eval()


@dataclass
class GeniusReport:
    index: Path
    quantizer: str
    generator: str | None
    mapping: Level0Mapping
    collisions: Any
    ignored_keys: int
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        c = self.collisions
        lines = [f"imported GENIUS quantizer {self.quantizer}" + (f" and generator ({self.generator})"
                                                                  if self.generator else " (no generator)")
                 + f" into {self.index} ({self.ignored_keys} CLIP/unused keys ignored)",
                 self.mapping.describe(),
                 f"semantic IDs: {c.n_distinct} distinct for {c.n_items} items, mean bucket {c.mean_bucket:.2f}, "
                 f"largest {c.max_bucket}"]
        return "\n".join(lines + self.notes)


def convert(rq_checkpoint: "str | os.PathLike | None", generator_checkpoint: "str | os.PathLike | None",
            index_dir: "str | os.PathLike", *, modality_map: "str | tuple | None" = None,
            device: str | None = None) -> GeniusReport:
    """Import into the index at ``index_dir`` (built with a ``clip-sf:`` encoder), compute the pool's codes, save.

    The quantizer comes from ``generator_checkpoint`` when it holds one (the copy its generator was trained with),
    else from ``rq_checkpoint``; with both, a difference between them is reported.
    """
    from ..devices import resolve_device
    from ..generator import GenerativeRetriever
    from ..index import Index

    if rq_checkpoint is None and generator_checkpoint is None:
        raise InvalidInputError("give the stage-1 checkpoint (rq_clip_large.pth), the stage-2 one, or both")
    index = Index.load(Path(index_dir), generative=False, device=device)
    if index.fusion != "raw-sum":
        raise InvalidInputError(f"{index_dir}: built with encoder {index.manifest.encoder!r}; GENIUS's combiner reads "
                                "raw CLIP-SF features: build the index with --encoder clip-sf:DIR "
                                "(unimir convert clip-sf)")
    ignored, notes, sources = 0, [], {}
    if rq_checkpoint is not None:
        rq_state, n = _drop_ignorable(read_state_dict(rq_checkpoint))
        ignored += n
        sources["rq"] = (split_quantizer(rq_state), str(rq_checkpoint))
        rest = sorted(set(rq_state) - {k for k in rq_state if k.split(".", 1)[0] in ("encoder", "vq", "residual_rq")})
        if rest:
            raise CheckpointError(f"{rq_checkpoint}: unexpected keys {rest[:20]}")
    gen_state = None
    if generator_checkpoint is not None:
        gen_state, n = _drop_ignorable(read_state_dict(generator_checkpoint))
        ignored += n
        copy = split_quantizer(gen_state, "quantizer.")
        gen_state = {k: v for k, v in gen_state.items() if not k.startswith("quantizer.")}
        if copy:
            sources["gen"] = (copy, str(generator_checkpoint))
    if not sources:
        raise CheckpointError(f"{generator_checkpoint}: holds no quantizer (quantizer.*); give rq_clip_large.pth too")
    q_state, where = sources.get("gen") or sources["rq"]
    if "gen" in sources and "rq" in sources:
        a, b = sources["rq"][0], sources["gen"][0]
        if set(a) != set(b) or any(not torch.equal(a[k], b[k]) for k in a):
            notes.append(f"note: the quantizer in {rq_checkpoint} differs from the copy in {generator_checkpoint}; "
                         "using the latter, which its generator was trained with")
    quantizer, level0 = quantizer_from_state(q_state, where)
    if quantizer.config.dim != index.manifest.dim:
        raise InvalidInputError(f"the quantizer expects {quantizer.config.dim}-d features, the index's encoder gives "
                                f"{index.manifest.dim}-d")
    generator = generator_from_state(gen_state, quantizer, str(generator_checkpoint)) if gen_state else None

    # GENIUS's own level-0 code of each pool item, then the permutation that best matches the modalities
    target = resolve_device(device)
    quantizer.to(target)
    z_np = quantizer.embed(index.feature_rows)  # combiner outputs: level 0 is not involved yet
    z = torch.from_numpy(z_np)
    book = quantizer.net.rq.modality_codebook.detach().cpu().clone()
    genius_c0 = squared_distances(z, book).argmin(-1).numpy() if len(z) else np.zeros(0, np.int64)
    mapping = learn_level0(genius_c0, index.modality_codes, modality_map)
    perm = torch.as_tensor(mapping.genius_code)
    rq = quantizer.net.rq
    with torch.no_grad():
        rq.modality_codebook.copy_(book[perm].to(target))
        if level0["cluster_size"] is not None:
            rq.modality_count.copy_(level0["cluster_size"].reshape(3)[perm].to(target))
        if level0["embed_avg"] is not None:
            rq.modality_sum.copy_(level0["embed_avg"].reshape(3, -1)[perm].to(target))
        if generator is not None:
            rows = generator.t5.shared.weight[3:6].clone()  # level-0 tokens 3..5, tied with the output layer
            generator.t5.shared.weight[3:6] = rows[perm]
    retriever = GenerativeRetriever(quantizer, generator.to(target) if generator is not None else None)
    retriever.train_configs = {"imported": {"from": "GENIUS", "quantizer": where,
                                            "generator": None if generator is None else str(generator_checkpoint),
                                            "level0": mapping.to_dict()}}
    stats = retriever.index_codes(quantizer.codes_from_embeddings(z_np, index.modality_codes))
    retriever.learned_rows = len(retriever)  # GENIUS trained its generator on this pool: no refresh of these rows
    index.generative = retriever
    index.save()
    return GeniusReport(Path(index_dir), quantizer.spec, None if generator is None else _gen_name(generator),
                        mapping, stats, ignored, notes)


def _gen_name(generator) -> str:
    c = generator.config
    return f"T5 {c.num_layers} layers, d_model {c.d_model}, {c.num_heads} heads, prefix {c.prefix_len}"
