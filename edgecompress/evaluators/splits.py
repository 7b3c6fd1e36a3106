"""Splits and their batches: the in-memory (`TensorSplit`) and on-disk (`FolderSplit`) image sets a dataset
loader (data.py) returns, and `Loader` / `make_loader` / `calibration_batches`, which batch them. Batches are
resized to the requested input resolution on the fly; `FolderSplit` follows its `Preprocess` step by step.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from edgecompress.errors import DataError
from edgecompress.runtime.preprocess import Preprocess


class Split(Protocol):
    labels: torch.Tensor

    def __len__(self) -> int: ...

    def batch(self, indices: torch.Tensor, size: int, augment: bool = False,
              generator: torch.Generator | None = None) -> torch.Tensor: ...


def _normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a float NCHW batch to size x size (no-op when already that size)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class TensorSplit:
    """An in-memory split: uint8 images N,C,H,W and int64 labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: tuple[float, ...],
                 std: tuple[float, ...], flip: bool = True) -> None:
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.mean, self.std, self.flip = images, labels, mean, std, flip

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> TensorSplit:
        return TensorSplit(self.images[indices], self.labels[indices], self.mean, self.std, self.flip)

    def batch(self, indices: torch.Tensor, size: int, augment: bool = False,
              generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.images[indices].float().div_(255.0)
        if augment:
            x = _augment(x, generator, self.flip)
        return _normalize(resize_batch(x, size), self.mean, self.std)


def _augment(x: torch.Tensor, generator: torch.Generator | None, flip: bool) -> torch.Tensor:
    """Random crop with 2-pixel (of 28) padding and horizontal flip, done on the whole batch."""
    n, _, h, w = x.shape
    pad = max(1, h // 14)
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # n,h
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # n,w
    out = padded[torch.arange(n).view(n, 1, 1), :, rows.view(n, h, 1), cols.view(n, 1, w)]  # n,h,w,c
    out = out.permute(0, 3, 1, 2).contiguous()
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        out[mask] = out[mask].flip(-1)
    return out


# ---- ImageNet-style folders' preprocessing (FolderSplit follows it step by step) ------------------------
FOLDER_PREPROCESS = Preprocess(
    dataset="imagefolder", stored="image files <root>/{train,val}/<class>/<image>", channels=3,
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), pil_mode="RGB", short_side_ratio=1.14,
    center_crop=True, tensor_resize=False,
)


class FolderSplit:
    """Images decoded from files on demand (ImageNet-style folders), as `preprocess` says: PIL decode, resize
    the short side to 1.14 x size, centre crop (random crop and flip when augmenting), /255, normalise."""

    def __init__(self, files: list[Path], labels: list[int], in_chans: int = 3,
                 preprocess: Preprocess = FOLDER_PREPROCESS) -> None:
        self.files = files
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.in_chans = in_chans
        self.preprocess = preprocess
        self.mean, self.std = preprocess.mean, preprocess.std

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices: torch.Tensor) -> FolderSplit:
        return FolderSplit([self.files[int(i)] for i in indices], self.labels[indices].tolist(), self.in_chans,
                           self.preprocess)

    def _load(self, path: Path, size: int, augment: bool, gen: torch.Generator | None) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        pp = self.preprocess
        try:
            with Image.open(path) as im:
                im = im.convert(pp.pil_mode)
                im = im.resize(pp.resized_dims(im.width, im.height, size), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8).reshape(im.height, im.width, -1)
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{path}: cannot decode image ({e})") from None
        t = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(pp.divisor)
        h, w = t.shape[1:]
        if augment:
            top = int(torch.randint(0, h - size + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - size + 1, (1,), generator=gen))
        else:
            left, top, _, _ = pp.crop_box(w, h, size)
        t = t[:, top: top + size, left: left + size]
        if augment and float(torch.rand(1, generator=gen)) < 0.5:
            t = t.flip(-1)
        return t

    def batch(self, indices: torch.Tensor, size: int, augment: bool = False,
              generator: torch.Generator | None = None) -> torch.Tensor:
        x = torch.stack([self._load(self.files[int(i)], size, augment, generator) for i in indices])
        return _normalize(x, self.mean, self.std)


# ---- batches ------------------------------------------------------------------------------------
class Loader:
    """Iterates (x, y) batches of a split at one resolution; reshuffles every epoch when asked."""

    def __init__(self, split: Split, size: int, batch_size: int, shuffle: bool = False,
                 augment: bool = False, seed: int = 0, limit: int | None = None) -> None:
        self.split, self.size, self.batch_size = split, size, batch_size
        self.shuffle, self.augment, self.limit = shuffle, augment, limit
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = min(len(self.split), self.limit or len(self.split))
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.limit:
            order = order[: self.limit]
        for start in range(0, len(order), self.batch_size):
            idx = order[start: start + self.batch_size]
            yield self.split.batch(idx, self.size, self.augment, self.generator), self.split.labels[idx]


def make_loader(split: Split, size: int, batch_size: int, shuffle: bool = False, augment: bool = False,
                seed: int = 0, limit: int | None = None) -> Loader:
    return Loader(split, size, batch_size, shuffle, augment, seed, limit)


def calibration_batches(split: Split, size: int, seed: int, n: int = 8, batch_size: int = 32) -> list[torch.Tensor]:
    """Int8 calibration images: `n` batches of `batch_size` shuffled images of `split` (the training split)
    at `size`, drawn with `seed`. The evaluator, retarget, export and the cascade's stages all use this
    draw, so a model's int8 form is calibrated on the same images wherever it is built."""
    loader = make_loader(split, size, batch_size, shuffle=True, seed=seed, limit=n * batch_size)
    return [x for x, _ in loader]
