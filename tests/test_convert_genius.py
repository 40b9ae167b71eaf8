"""GENIUS import: fabricated stage-1 / stage-2 state dicts with the released key names at tiny sizes, checked
against a plain reference of GENIUS's combiner, residual argmin and T5 forward written here."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_convert_clip_sf import EMBED, make_tokenizer, openai_state, save_uniir

from unimir.convert import CheckpointError
from unimir.convert.from_genius import learn_level0
from unimir.errors import InvalidInputError

D, H, L, K, P, DM, HEADS, FF, LAYERS = EMBED, 16, 3, 8, 3, 32, 4, 64, 2
VOCAB = 6 + L * K


@pytest.fixture(scope="module")
def clip_sf_index(tmp_path_factory, corpus):
    """An index of the shapes corpus built with a tiny converted CLIP-SF encoder (raw parts, raw-sum fusion)."""
    from unimir.convert import clip_sf
    from unimir.index import Index

    mp = pytest.MonkeyPatch()
    mp.setenv("UNIMIR_PRECISION", "fp32")
    tmp = tmp_path_factory.mktemp("genius")
    save_uniir(tmp / "clip.pth", openai_state(), None)
    clip_sf(tmp / "clip.pth", tmp / "enc", tokenizer=str(make_tokenizer(tmp / "tok")))
    Index.build(corpus["pool"], tmp / "idx", encoder=f"clip-sf:{tmp / 'enc'}", cache=False)
    yield tmp
    mp.undo()


# --- the reference: GENIUS's forward as its code reads ---------------------------------------------------------
def genius_z(st, image, text, m_img, m_txt):
    lin = lambda x, n: x @ st[n + ".weight"].T + st[n + ".bias"]  # noqa: E731
    img, txt = image * m_img[:, None], text * m_txt[:, None]
    h = torch.cat([F.relu(lin(txt, "encoder.text_projection_layer")),
                   F.relu(lin(img, "encoder.image_projection_layer"))], dim=-1)  # text first
    gate = torch.sigmoid(lin(F.relu(lin(h, "encoder.dynamic_scalar.0")), "encoder.dynamic_scalar.3"))
    out = lin(F.relu(lin(h, "encoder.combiner_layer")), "encoder.output_layer") + gate * txt + (1 - gate) * img
    return F.normalize(out, dim=-1)


def genius_codes(st, z):
    """Residual argmin over residual_rq.layers.0..L (level 0 is GENIUS's learnt 3-code level)."""
    r, codes = z, []
    for level in range(L + 1):
        book = st[f"residual_rq.layers.{level}._codebook.embed"][0]
        c = ((r[:, None, :] - book[None]) ** 2).sum(-1).argmin(-1)
        codes.append(c)
        r = r - book[c]
    return torch.stack(codes, 1)


def genius_tokens(codes):
    """GENIUS's token ids of IDs (level 0 in GENIUS's own numbering)."""
    offsets = torch.tensor([3] + [6 + (level - 1) * K for level in range(1, L + 1)])
    return codes + offsets


def reference_t5(gen_state):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=VOCAB, d_model=DM, d_kv=DM // HEADS, d_ff=FF, num_layers=0, num_decoder_layers=LAYERS,
                      num_heads=HEADS, feed_forward_proj="relu", pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    model = T5ForConditionalGeneration(config).eval()
    own = {k[len("id_generator."):]: v for k, v in gen_state.items() if k.startswith("id_generator.")}
    model.load_state_dict(own, strict=False)
    for name, tensor in own.items():  # every released tensor really landed
        assert torch.equal(model.state_dict()[name], tensor), name
    return model


def reference_log_probs(model, gen_state, z, tokens):
    prefix = (z @ gen_state["embed_projector.0.weight"].T + gen_state["embed_projector.0.bias"]).view(len(z), P, DM)
    decoder_input = torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], dim=1)
    logits = model(inputs_embeds=prefix, decoder_input_ids=decoder_input).logits
    return F.log_softmax(logits.float(), -1).gather(-1, tokens[:, :, None]).squeeze(-1).sum(-1)


# --- fabricated checkpoints -----------------------------------------------------------------------------------
def codebook(prefix, embed):
    k = embed.shape[0]
    return {f"{prefix}._codebook.initted": torch.tensor([1.0]),
            f"{prefix}._codebook.cluster_size": torch.rand(1, k) * 10,
            f"{prefix}._codebook.embed_avg": embed[None] * 3.0, f"{prefix}._codebook.embed": embed[None].clone()}


def stage1(features, modality_codes, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, sc=0.3: torch.randn(*s, generator=g) * sc  # noqa: E731
    st = {"encoder.text_projection_layer.weight": r(H, D), "encoder.text_projection_layer.bias": r(H),
          "encoder.image_projection_layer.weight": r(H, D), "encoder.image_projection_layer.bias": r(H),
          "encoder.combiner_layer.weight": r(2 * H, 2 * H), "encoder.combiner_layer.bias": r(2 * H),
          "encoder.output_layer.weight": r(D, 2 * H), "encoder.output_layer.bias": r(D),
          "encoder.dynamic_scalar.0.weight": r(2 * H, 2 * H), "encoder.dynamic_scalar.0.bias": r(2 * H),
          "encoder.dynamic_scalar.3.weight": r(1, 2 * H), "encoder.dynamic_scalar.3.bias": r(1)}
    f = {k: torch.from_numpy(np.asarray(getattr(features, k), np.float32)) for k in ("image", "text")}
    z = genius_z(st, f["image"], f["text"], torch.from_numpy(features.image_mask.astype(np.float32)),
                 torch.from_numpy(features.text_mask.astype(np.float32)))
    codes = torch.from_numpy(modality_codes.astype(np.int64))
    # GENIUS's k-means numbered the modalities its own way: text -> 0, image -> 2, code 1 unused by this pool
    level0 = torch.stack([z[codes == 1].mean(0), -z.mean(0), z[codes == 0].mean(0)])
    st.update(codebook("vq", level0))
    st.update(codebook("residual_rq.layers.0", level0))
    residual = z - level0[torch.where(codes == 1, 0, 2)]
    for level in range(1, L + 1):
        book = residual[torch.randperm(len(residual), generator=g)[:K]] + r(K, D, sc=0.01)
        st.update(codebook(f"residual_rq.layers.{level}", book))
        residual = residual - book[((residual[:, None] - book[None]) ** 2).sum(-1).argmin(-1)]
    st["residual_rq.mlps.0.weight"] = r(D, D)  # written by some vector-quantize-pytorch versions; unused
    st["clip_model.clip_model.token_embedding.weight"] = r(4, D)  # CLIP attached at save time
    return st


def stage2(stage1_state, seed=1):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(vocab_size=VOCAB, d_model=DM, d_kv=DM // HEADS, d_ff=FF, num_layers=0, num_decoder_layers=LAYERS,
                      num_heads=HEADS, feed_forward_proj="relu", pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    t5 = T5ForConditionalGeneration(config).state_dict()
    shared = torch.randn(VOCAB, DM) * 3.0
    t5 = {k: (torch.randn_like(v) * 0.2 if v.dim() > 1 else 1 + 0.1 * torch.randn_like(v)) for k, v in t5.items()}
    for alias in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
        t5[alias] = shared
    st = {f"quantizer.{k}": v for k, v in stage1_state.items() if not k.startswith("clip_model.")}
    st.update({f"id_generator.{k}": v for k, v in t5.items()})
    st["embed_projector.0.weight"], st["embed_projector.0.bias"] = torch.randn(P * DM, D) * 0.3, torch.randn(P * DM)
    return st


@pytest.fixture(scope="module")
def imported(clip_sf_index, one_torch_thread):
    from unimir.index import Index

    tmp = clip_sf_index
    index = Index.load(tmp / "idx")
    s1 = stage1(index.features, index.modality_codes)
    s2 = stage2(s1)
    torch.save({"model": s1, "optimizer": {}, "config": None, "epoch": 20}, tmp / "rq.pth")
    torch.save({"model": s2, "optimizer": {}, "config": None, "epoch": 30}, tmp / "gen.pth")
    run = subprocess.run([sys.executable, "-m", "unimir", "convert", "genius", str(tmp / "rq.pth"),
                          str(tmp / "gen.pth"), "--index", str(tmp / "idx")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return tmp, s1, s2, run.stdout


def test_level0_mapping_is_learnt_from_the_pool_and_reported(imported):
    _, _, _, stdout = imported
    assert "image <- GENIUS code 2 (100.0% of its 18 pool items)" in stdout
    assert "text <- GENIUS code 0 (100.0% of its 18 pool items)" in stdout
    assert "purity 100.0%" in stdout and "--modality-map 2,0,1" in stdout


def test_imported_quantizer_gives_the_reference_codes(imported):
    from unimir.index import Index

    tmp, s1, _, _ = imported
    index = Index.load(tmp / "idx")
    f = index.features
    z = genius_z(s1, torch.from_numpy(f.image), torch.from_numpy(f.text),
                 torch.from_numpy(f.image_mask.astype(np.float32)), torch.from_numpy(f.text_mask.astype(np.float32)))
    expected = genius_codes(s1, z)
    unimir_c0 = torch.tensor([1, -1, 0])[expected[:, 0]]  # GENIUS code 0 is text (1), code 2 is image (0)
    assert (unimir_c0 == torch.from_numpy(index.modality_codes.astype(np.int64))).all()  # exact modality kept
    np.testing.assert_array_equal(index.generative.codes[:, 1:], expected[:, 1:].numpy())
    np.testing.assert_allclose(index.generative.quantizer.embed(f), z.numpy(), atol=1e-5)
    assert index.modes == ("dense", "generative", "generative-rerank", "quantize")


def test_imported_generator_scores_as_the_plain_t5_forward(imported):
    from unimir.generator.beam import constrained_beam_search, sequence_log_probs
    from unimir.index import Index

    tmp, s1, s2, _ = imported
    index = Index.load(tmp / "idx")
    retriever = index.generative
    z = torch.from_numpy(retriever.quantizer.embed(index.features[:6]))
    ids = torch.from_numpy(retriever.codes[[0, 1, 7, 20, 33]].astype(np.int64))
    genius_ids = ids.clone()
    genius_ids[:, 0] = torch.tensor([2, 0, 1])[ids[:, 0]]  # unimir modality -> GENIUS level-0 code
    ref = reference_t5(s2)
    with torch.no_grad():
        expected = reference_log_probs(ref, s2, z[:5], genius_tokens(genius_ids))
    got = sequence_log_probs(retriever.generator, z[:5], retriever.generator.vocab.codes_to_tokens(ids))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
    # the fast constrained decoder: only pool IDs, each scored as the reference scores it
    found = constrained_beam_search(retriever.generator, z, retriever.trie, beams=8)
    pool = {tuple(c) for c in retriever.codes.tolist()}
    for q in range(len(z)):
        valid = found.leaves[q] >= 0
        assert valid.sum() == 8
        beams = torch.from_numpy(found.ids[q][valid])
        assert all(tuple(b) in pool for b in beams.tolist())
        g = beams.clone()
        g[:, 0] = torch.tensor([2, 0, 1])[beams[:, 0]]
        with torch.no_grad():
            ref_scores = reference_log_probs(ref, s2, z[q:q + 1].expand(len(g), -1), genius_tokens(g))
        np.testing.assert_allclose(found.scores[q][valid], ref_scores.numpy(), atol=1e-4)


def test_generative_modes_search_the_imported_index(imported):
    from unimir.index import Index

    tmp, _, _, _ = imported
    index = Index.load(tmp / "idx")
    # the imported generator knows the pool it was trained on: a later add refreshes only the new rows
    assert index.generative.learned_rows == len(index.generative) == index.manifest.generative["learned_rows"]
    for mode in ("generative", "generative-rerank", "quantize"):
        hits = index.search("a red circle", modality="image", k=5, mode=mode, beams=4).hits
        assert hits and all(h.modality == "image" for h in hits)
    run = subprocess.run([sys.executable, "-m", "unimir", "search", str(tmp / "idx"), "--text", "a red circle",
                          "--mode", "generative", "--k", "3", "--device", "cpu"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_level0_mapping_helpers():
    codes = np.array([1, 1, 1, 0, 2, 2])
    modality = np.array([0, 0, 1, 1, 2, 2])
    m = learn_level0(codes, modality)
    assert m.genius_code == (1, 0, 2) and m.purity == pytest.approx(5 / 6)
    assert learn_level0(codes, modality, "0,1,2").given
    with pytest.raises(InvalidInputError, match="permutation"):
        learn_level0(codes, modality, "0,0,1")


def test_a_non_clip_sf_index_or_a_broken_checkpoint_is_refused(imported, tmp_path, corpus):
    from unimir.convert import genius
    from unimir.index import Index

    tmp, s1, _, _ = imported
    builtin = tmp_path / "builtin-idx"
    Index.build([c for c in Index.load(tmp / "idx").candidates if not c.img_path][:3], builtin, cache=False)
    with pytest.raises(InvalidInputError, match="clip-sf"):
        genius(tmp / "rq.pth", None, builtin)
    broken = dict(s1)
    broken["vq._codebook.embed"] = broken["vq._codebook.embed"] + 1.0
    torch.save({"model": broken}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="vq._codebook and residual_rq.layers.0._codebook differ"):
        genius(tmp_path / "broken.pth", None, tmp / "idx")


def test_stage1_alone_gives_quantize_mode_and_the_same_codes(imported, tmp_path):
    import shutil

    from unimir.convert import genius
    from unimir.index import Index

    tmp, _, _, _ = imported
    shutil.copytree(tmp / "idx", tmp_path / "idx")
    report = genius(tmp / "rq.pth", None, tmp_path / "idx", modality_map="2,0,1")
    assert report.generator is None and report.mapping.given and report.ignored_keys == 2
    alone, both = Index.load(tmp_path / "idx"), Index.load(tmp / "idx")
    assert alone.modes == ("dense", "quantize")
    np.testing.assert_array_equal(alone.generative.codes, both.generative.codes)
