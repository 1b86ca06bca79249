"""The bundled default: scikit-learn's 8x8 handwritten digits padded to 16x16, a small UNet, and a quality score.

scikit-learn ships the digits with the package (1,797 images, no download). The quality score comes from a digit
classifier trained once on the same images: the share of generated samples it recognises with confidence >= 0.9,
and the entropy of the predicted classes (are all ten digits there, or only a few?).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["digits_dataset", "build_digits_unet", "DigitQuality", "DIGITS_RESOLUTION"]

DIGITS_RESOLUTION = 16
_PAD = (DIGITS_RESOLUTION - 8) // 2


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32) / 16.0, bunch.target.astype(np.int64)  # pixels 0..16 -> 0..1


def digits_dataset(max_rows: int | None = None):
    """A `datasets.Dataset` with `image` (16x16 grayscale PIL images) and `label` (0-9), from scikit-learn."""
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    images, labels = _digits()
    if max_rows is not None:
        images, labels = images[:max_rows], labels[:max_rows]
    padded = np.pad(images, ((0, 0), (_PAD, _PAD), (_PAD, _PAD)))
    pil = [PILImage.fromarray(np.round(img * 255).astype(np.uint8), mode="L") for img in padded]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    return Dataset.from_dict({"image": pil, "label": labels.tolist()}, features=features)


def build_digits_unet(
    block_out_channels: Sequence[int] = (32, 64, 64),
    layers_per_block: int = 1,
    attention: bool = True,
    num_classes: int | None = None,
    seed: int | None = None,
):
    """A small `UNet2DModel` for 16x16 grayscale images; class-conditional when `num_classes` is given.

    With `seed`, the initial weights are a function of it alone (drawn from a forked RNG, so the caller's random
    state is untouched): a recipe builds the model before the trainer seeds anything."""
    from diffusers import UNet2DModel

    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_digits_unet(block_out_channels, layers_per_block, attention, num_classes)
    n = len(block_out_channels)
    # Attention only at the coarsest resolution: it is where it helps most and costs least.
    down = ["DownBlock2D"] * (n - 1) + ["AttnDownBlock2D" if attention else "DownBlock2D"]
    up = ["AttnUpBlock2D" if attention else "UpBlock2D"] + ["UpBlock2D"] * (n - 1)
    return UNet2DModel(
        sample_size=DIGITS_RESOLUTION,
        in_channels=1,
        out_channels=1,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=min(8, min(block_out_channels)),
        attention_head_dim=min(block_out_channels[-1], 32),
        num_class_embeds=num_classes,
    )


class DigitQuality:
    """Scores generated digits with a logistic-regression classifier trained on the 1,797 real ones.

    Call it with images in [0, 1], shape (N, 1, 16, 16). Returns `confident_share` (share of samples classified
    with probability >= `threshold`), `class_entropy` (entropy of the predicted classes over log(10): 1.0 when all
    ten digits are equally present) and `quality`, their product, so a model that draws one perfect digit over and
    over does not score well.
    """

    def __init__(self, threshold: float = 0.9):
        self.threshold = threshold
        self.classifier = _classifier()

    def __call__(self, images: torch.Tensor) -> dict[str, float]:
        x = images.detach().float().cpu().clamp(0, 1)
        if x.ndim != 4 or x.shape[1:] != (1, DIGITS_RESOLUTION, DIGITS_RESOLUTION):
            raise ValueError(f"DigitQuality expects images of shape (N, 1, 16, 16), got {tuple(x.shape)}")
        features = x[:, 0].reshape(len(x), -1).numpy()
        proba = self.classifier.predict_proba(features)
        predicted = proba.argmax(axis=1)
        confident = proba.max(axis=1) >= self.threshold
        counts = np.bincount(predicted, minlength=10).astype(np.float64)
        p = counts / counts.sum()
        entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum() / math.log(10))
        share = float(confident.mean())
        return {"confident_share": share, "class_entropy": entropy, "quality": share * entropy}


@functools.lru_cache(maxsize=1)
def _classifier():
    from sklearn.linear_model import LogisticRegression

    images, labels = _digits()
    padded = np.pad(images, ((0, 0), (_PAD, _PAD), (_PAD, _PAD))).reshape(len(images), -1)
    return LogisticRegression(C=1.0, max_iter=2000).fit(padded, labels)
