"""Diffusion training on hftrain's rails: `DiffusionTrainer` (an accelerate loop), `DiffusionConfig`, schedules and
samplers by name, `ImagePipeline`, and the bundled digits default."""

from .config import DiffusionConfig, UNetArguments
from .pipeline import ImagePipeline
from .schedules import KARRAS_SAMPLERS, NOISE_SCHEDULES, PREDICTION_TYPES, SAMPLERS
from .trainer import DiffusionTrainer

__all__ = [
    "DiffusionConfig",
    "DiffusionTrainer",
    "ImagePipeline",
    "UNetArguments",
    "KARRAS_SAMPLERS",
    "NOISE_SCHEDULES",
    "PREDICTION_TYPES",
    "SAMPLERS",
]
