"""Image datasets for the diffusion loop: checks at start, tensors in [-1, 1], and a resumable sampler."""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError

__all__ = ["ImageDataset", "EpochSampler", "collate_images", "image_datasets", "train_loader"]

logger = logging.getLogger(__name__)

# Small datasets are decoded once into memory; above this size images are decoded per item.
_CACHE_LIMIT_BYTES = 512 * 2**20
_CHECK_ROWS = 1000


class ImageDataset(Dataset):
    """Rows of `dataset` as `{"pixel_values", "class_labels"?, "caption"?}`, checked before training starts.

    Raises `DataError` when the image column is missing, when images have mixed sizes or the wrong size and
    `image_resize` is off, or when class labels are missing or out of range.
    """

    def __init__(
        self,
        dataset: Any,
        image_column: str,
        resolution: int,
        channels: int,
        resize: bool = False,
        class_column: Optional[str] = None,
        num_classes: Optional[int] = None,
        caption_column: Optional[str] = None,
    ):
        columns = list(getattr(dataset, "column_names", None) or (dataset[0].keys() if len(dataset) else []))
        if len(dataset) == 0:
            raise DataError("train_dataset: the dataset is empty")
        for field_name, column in (
            ("image_column", image_column),
            ("class_column", class_column),
            ("caption_column", caption_column),
        ):
            if column is not None and column not in columns:
                raise DataError(f"{field_name}: the dataset has no column {column!r}; its columns are {columns}")
        self.dataset, self.image_column = dataset, image_column
        self.class_column, self.caption_column = class_column, caption_column
        self.resolution, self.channels, self.resize, self.num_classes = resolution, channels, resize, num_classes
        self._check(len(dataset) if len(dataset) <= _CHECK_ROWS else _CHECK_ROWS)
        # Labels and captions are read as whole columns once: reading a row would also decode its image.
        self._labels = None if class_column is None else [int(v) for v in _column(dataset, class_column)]
        self._captions = None if caption_column is None else [str(v) for v in _column(dataset, caption_column)]
        self._cache = None
        if len(dataset) * channels * resolution * resolution * 4 <= _CACHE_LIMIT_BYTES:
            self._cache = torch.stack([self._pixels(i) for i in range(len(dataset))])

    def _check(self, rows: int) -> None:
        sizes = {}
        for i in range(rows):
            image = self.dataset[i][self.image_column]
            if not hasattr(image, "size") or not hasattr(image, "convert"):
                raise DataError(
                    f"image_column {self.image_column!r}: row {i} holds {type(image).__name__}, expected a PIL image"
                )
            sizes.setdefault(image.size, i)
            if self.class_column is not None:
                label = self.dataset[i][self.class_column]
                if not isinstance(label, (int, np.integer)) or not 0 <= int(label) < (self.num_classes or 0):
                    raise DataError(
                        f"class_column {self.class_column!r}: row {i} holds {label!r}; expected an integer in "
                        f"[0, {self.num_classes}) (the UNet's num_class_embeds)"
                    )
        if self.resize:
            return
        if len(sizes) > 1:
            shown = ", ".join(f"{w}x{h} (row {i})" for (w, h), i in list(sizes.items())[:4])
            raise DataError(
                f"image_column {self.image_column!r}: images have mixed sizes ({shown}); set image_resize: true "
                f"to resize and center-crop them to resolution {self.resolution}"
            )
        ((w, h),) = sizes
        if (w, h) != (self.resolution, self.resolution):
            raise DataError(
                f"image_column {self.image_column!r}: images are {w}x{h} but resolution is {self.resolution}; "
                f"set image_resize: true or resolution: {w}" + ("" if w == h else " (square images only)")
            )

    def _pixels(self, index: int) -> torch.Tensor:
        image = self.dataset[index][self.image_column].convert("L" if self.channels == 1 else "RGB")
        if self.resize:
            image = _resize_center_crop(image, self.resolution)
        elif image.size != (self.resolution, self.resolution):
            raise DataError(
                f"image_column {self.image_column!r}: row {index} is {image.size}, expected "
                f"{self.resolution}x{self.resolution} (set image_resize: true)"
            )
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(array))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = {"pixel_values": self._cache[index] if self._cache is not None else self._pixels(index)}
        if self._labels is not None:
            item["class_labels"] = self._labels[index]
        if self._captions is not None:
            item["caption"] = self._captions[index]
        return item


def image_datasets(
    train: Any, eval_rows: Any, args: Any, unet: Any, resolution: int, num_classes: Optional[int]
) -> tuple[ImageDataset, Optional[ImageDataset]]:
    """The train and eval sets as checked `ImageDataset`s for `unet` at `resolution` (the columns `args` names);
    the UNet's `sample_size` becomes the trained resolution, so its pipelines generate at that size."""
    kwargs = dict(
        image_column=args.image_column,
        resolution=resolution,
        channels=unet.config.in_channels,
        resize=args.image_resize,
        class_column=args.class_column,
        num_classes=num_classes,
        caption_column=args.caption_column,
    )
    datasets = ImageDataset(train, **kwargs), None if eval_rows is None else ImageDataset(eval_rows, **kwargs)
    if unet.config.sample_size != resolution:
        logger.warning(f"UNet sample_size {unet.config.sample_size} -> {resolution} (resolution)")
        unet.register_to_config(sample_size=resolution)
    return datasets


def train_loader(dataset: Dataset, sampler: Sampler, collate_fn: Any, args: Any) -> DataLoader:
    """The training `DataLoader` with the `dataloader_*` fields (the worker-only ones only with workers). It has its
    own generator, so creating an iterator draws nothing from the global RNG that a resume restores."""
    options: dict[str, Any] = {"num_workers": args.dataloader_num_workers, "pin_memory": args.dataloader_pin_memory}
    if args.dataloader_num_workers > 0:
        options.update(
            persistent_workers=args.dataloader_persistent_workers,
            prefetch_factor=args.dataloader_prefetch_factor,
            multiprocessing_context=args.dataloader_multiprocessing_context,
        )
    return DataLoader(
        dataset,
        batch_size=args.per_device_train_batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        drop_last=args.dataloader_drop_last,
        generator=torch.Generator().manual_seed(args.seed),
        **options,
    )


def collate_images(rows: list[dict], tokenizer: Any = None) -> dict:
    """A batch of `ImageDataset` items: stacked pixels, class labels, and token ids of the captions (padded to the
    tokenizer's max length) when there are captions."""
    batch = {"pixel_values": torch.stack([r["pixel_values"] for r in rows])}
    if "class_labels" in rows[0]:
        batch["class_labels"] = torch.tensor([r["class_labels"] for r in rows], dtype=torch.long)
    if "caption" in rows[0]:
        batch["input_ids"] = tokenizer(
            [r["caption"] for r in rows],
            padding="max_length",
            truncation=True,
            max_length=tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids
    return batch


def _column(dataset, name: str) -> list:
    if hasattr(dataset, "column_names"):
        return list(dataset[name])
    return [dataset[i][name] for i in range(len(dataset))]


def _resize_center_crop(image, size: int):
    from PIL import Image

    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


class EpochSampler(Sampler[int]):
    """A shuffled order that is a pure function of (seed, epoch), identical on every process.

    The loop sets `epoch` itself before each epoch. There is deliberately no `set_epoch` method: accelerate's
    `DataLoaderShard` calls `set_epoch` with its own iteration counter, which restarts at 0 after a resume and
    would replay epoch 0's order.
    """

    def __init__(self, num_rows: int, seed: int):
        self.num_rows, self.seed, self.epoch = num_rows, seed, 0

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.num_rows, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_rows
