"""Stage 1 of GENIUS: combiner MLP + modality-decoupled residual quantizer (``genius-method.md`` §3)."""

from .combiner import Combiner, FeatureTensors
from .config import NUM_MODALITIES, QuantizerConfig, QuantizerTrainConfig
from .model import SemanticQuantizer
from .pairs import TrainingPairs
from .residual import ModalityResidualQuantizer, QuantizeOutput
from .stats import CollisionStats, collision_stats
from .train import QuantizerTrainReport, quantizer_loss, train_quantizer

__all__ = [
    "NUM_MODALITIES", "CollisionStats", "Combiner", "FeatureTensors", "ModalityResidualQuantizer", "QuantizeOutput",
    "QuantizerConfig", "QuantizerTrainConfig", "QuantizerTrainReport", "SemanticQuantizer", "TrainingPairs",
    "collision_stats", "quantizer_loss", "train_quantizer",
]
