"""Identity-per-folder image trees (VGGFace2, LFW, CASIA-WebFace, the synthetic set) → one HDF5 store.

Preparation indexes ``root/<identity>/<image>``, picks identities (count, minimum images each, seed),
splits each identity's images into train/val/test, crops (VGGFace2 loose boxes when present, with a
margin, else a centred square), resizes, and stores uint8 arrays once, so training and attacks never
wait for JPEG decoding.

Store layout (``results/data/{size}.h5``): ``images`` (N,H,W,3) uint8, ``labels`` (N,) int64,
``split`` (N,) uint8 (0 train, 1 val, 2 test), ``identities`` (K,) str, ``paths`` (N,) str relative to
the root; with ``masks`` (the synthetic set's part masks, ``<nnnn>.mask.png`` beside each image) also
``masks`` (N,H,W) uint8, each cropped and resized like its image (nearest neighbour; 0 = background, the
face parts > 0); attributes record the arguments.
"""
from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .errors import InputError
from .io.store import read_attrs, read_h5, write_h5

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "DatasetError",
    "ImageReadError",
    "index_tree",
    "select_identities",
    "split_counts",
    "split_identity",
    "load_boxes",
    "load_image",
    "load_mask",
    "mask_path",
    "prepare",
    "Prepared",
    "load_prepared",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: Split codes stored in ``split``.
SPLITS = {"train": 0, "val": 1, "test": 2}


class DatasetError(InputError):
    """The image tree cannot give the requested dataset (missing root, too few identities or images)."""


class ImageReadError(DatasetError):
    """An image file cannot be decoded."""


def index_tree(root: str | os.PathLike) -> dict[str, list[str]]:
    """Map identity folder name → sorted image paths (relative to ``root``) of an identity-per-folder tree.

    Files ending in ``.mask.png`` (part masks) and non-image files are ignored. Raises
    :class:`DatasetError` if ``root`` is missing or holds no identity folder with images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root '{root}' does not exist or is not a folder")
    out: dict[str, list[str]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if d.name == "bb_landmark":
            continue
        files = sorted(
            f"{d.name}/{f.name}"
            for f in d.iterdir()
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.endswith(".mask.png")
        )
        if files:
            out[d.name] = files
    if not out:
        raise DatasetError(f"dataset root '{root}' has no identity folders with images ({', '.join(IMAGE_EXTENSIONS)})")
    return out


def select_identities(index: dict[str, list[str]], count: int | None, min_images: int, seed: int) -> list[str]:
    """Pick ``count`` identities (all when None) among those with at least ``min_images`` images, seeded;
    returned sorted by name. Raises :class:`DatasetError` naming the shortfall."""
    eligible = sorted(k for k, v in index.items() if len(v) >= min_images)
    if count is None:
        count = max(2, len(eligible))
    if count < 2:
        raise DatasetError(f"identities must be >= 2, got {count}")
    if len(eligible) < count:
        short = sorted((len(v), k) for k, v in index.items() if len(v) < min_images)[:5]
        detail = ", ".join(f"'{k}' has {n}" for n, k in short)
        raise DatasetError(
            f"need {count} identities with at least {min_images} images each, found {len(eligible)} of "
            f"{len(index)}" + (f" (e.g. {detail})" if detail else "")
        )
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(eligible), size=count, replace=False)
    return sorted(eligible[i] for i in picked)


def split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """(train, val, test) image counts of one identity's n images: ``round(n·val)`` and ``round(n·test)`` (at
    least one each when the fraction is > 0), the rest train; DatasetError when no training image is left."""
    _, va, te = fractions
    n_test = max(1, round(n * te)) if te > 0 else 0
    n_val = max(1, round(n * va)) if va > 0 else 0
    if n - n_test - n_val < 1:
        raise DatasetError(f"an identity with {n} images cannot be split {fractions}: no training image left")
    return n - n_val - n_test, n_val, n_test


def split_identity(n: int, fractions: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Split codes (n,) uint8 for one identity's n images, shuffled, in the counts of :func:`split_counts`."""
    _, n_val, n_test = split_counts(n, fractions)
    codes = np.full(n, SPLITS["train"], np.uint8)
    perm = rng.permutation(n)
    codes[perm[:n_test]] = SPLITS["test"]
    codes[perm[n_test : n_test + n_val]] = SPLITS["val"]
    return codes


def load_boxes(root: str | os.PathLike) -> dict[str, tuple[float, float, float, float]]:
    """VGGFace2 loose boxes from ``root/bb_landmark/loose_bb_{train,test}.csv``: 'identity/image' (no
    extension) → (x, y, w, h). Empty when the folder is absent."""
    out: dict[str, tuple[float, float, float, float]] = {}
    folder = Path(root) / "bb_landmark"
    for name in ("loose_bb_train.csv", "loose_bb_test.csv"):
        f = folder / name
        if not f.is_file():
            continue
        with f.open(newline="") as fh:
            for row in csv.DictReader(fh):
                try:
                    out[row["NAME_ID"]] = (float(row["X"]), float(row["Y"]), float(row["W"]), float(row["H"]))
                except (KeyError, ValueError) as e:
                    raise DatasetError(f"{f}: malformed row {row} ({e})") from None
    return out


def load_image(
    path: str | os.PathLike, size: int, box: tuple[float, float, float, float] | None = None, margin: float = 0.3
) -> np.ndarray:
    """Decode, crop and resize one image to (size,size,3) uint8.

    With a ``box`` (x, y, w, h) the crop is a square around the box enlarged by ``margin`` (fraction of
    its longer side on each side), clipped to the image; without one, the centred square.
    Raises :class:`ImageReadError` naming the file when it cannot be decoded.
    """
    return _load_image(path, size, box, margin)[0]


def _load_image(path, size: int, box, margin: float) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_image`'s array and the decoded image's own size (w, h), which its part mask must match."""
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and raises above twice that: both are refused, before decoding
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"cannot read image '{path}': refused as a possible decompression bomb ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"cannot read image '{path}': {e}") from None
    wh = im.size
    im = im.resize((size, size), Image.Resampling.BILINEAR, box=_crop(wh, box, margin), reducing_gap=None)
    return np.asarray(im, dtype=np.uint8), wh


def _crop(wh: tuple[int, int], box: tuple[float, float, float, float] | None, margin: float) -> tuple[float, ...]:
    """The square (left, top, right, bottom) that :func:`load_image` crops from an image of size ``wh``."""
    w, h = wh
    if box is not None:
        x, y, bw, bh = box
        side = max(bw, bh) * (1 + 2 * margin)
        cx, cy = x + bw / 2, y + bh / 2
    else:
        side = min(w, h)
        cx, cy = w / 2, h / 2
    side = min(side, w, h)
    left = min(max(cx - side / 2, 0), w - side)
    top = min(max(cy - side / 2, 0), h - side)
    return (left, top, left + side, top + side)


def mask_path(image: str | os.PathLike) -> Path:
    """The part mask that belongs to an image: ``…/0007.png`` → ``…/0007.mask.png``."""
    image = Path(image)
    return image.with_name(image.name[: -len(image.suffix)] + ".mask.png")


def load_mask(
    path: str | os.PathLike, size: int, image_size: tuple[int, int],
    box: tuple[float, float, float, float] | None = None, margin: float = 0.3,
) -> np.ndarray:
    """Decode a part mask (single channel, 0 = background) and crop and resize it as :func:`load_image` does
    its image (``image_size`` (w, h): the image's, which the mask must match), nearest neighbour: (size,size)
    uint8. Raises :class:`ImageReadError` naming the file when it is missing, unreadable or of another size."""
    if not Path(path).is_file():
        raise ImageReadError(f"part mask '{path}' does not exist (with masks, every image needs one beside it)")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P", "1", "I", "I;16"):
                raise InputError(f"a part mask has one channel, this one is {im.mode}")
            im = im.convert("L") if im.mode != "L" else im
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"cannot read part mask '{path}': {e}") from None
    if im.size != tuple(image_size):
        raise ImageReadError(f"part mask '{path}' is {im.size[0]}×{im.size[1]}, its image {image_size[0]}×{image_size[1]}")
    im = im.resize((size, size), Image.Resampling.NEAREST, box=_crop(im.size, box, margin), reducing_gap=None)
    return np.asarray(im, dtype=np.uint8)


@dataclass
class Prepared:
    """A prepared store in memory: images (N,H,W,3) uint8, labels (N,), split (N,), identity names, and the
    part masks (N,H,W) uint8 (0 = background) when the store has them, else None."""

    images: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    identities: list[str]
    paths: list[str]
    attrs: dict = field(default_factory=dict)
    masks: np.ndarray | None = None

    def subset(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images, labels, indices) of split ``name`` ('train', 'val' or 'test')."""
        idx = np.flatnonzero(self.split == SPLITS[name])
        return self.images[idx], self.labels[idx], idx


def prepare(
    root: str | os.PathLike,
    out: str | os.PathLike,
    size: int,
    identities: int | None = None,
    min_images: int = 10,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    margin: float = 0.3,
    skip_broken: bool = False,
    progress: bool = False,
    masks: bool = False,
) -> dict:
    """Index ``root``, select, split, crop, resize and write the store ``out``. Returns a report dict
    (counts per split, skipped files). A broken image is an :class:`ImageReadError` naming it, or with
    ``skip_broken`` is left out and listed in the report. ``masks``: carry each image's part mask
    (:func:`mask_path`) into the store; a missing or broken mask is an error naming it (or, with
    ``skip_broken``, leaves its image out)."""
    if abs(sum(split) - 1.0) > 1e-6 or any(f < 0 for f in split):
        raise DatasetError(f"split fractions must be >= 0 and sum to 1, got {split}")
    if size < 8:
        raise DatasetError(f"image size must be >= 8 pixels, got {size}")
    root = Path(root)
    index = index_tree(root)
    chosen = select_identities(index, identities, min_images, seed)
    boxes = load_boxes(root)
    rng = np.random.default_rng(seed + 1)
    images, labels, codes, paths, skipped, part_masks = [], [], [], [], [], []
    it = list(enumerate(chosen))
    if progress:

        it = tqdm(it, desc="prepare", unit="identity")
    for label, name in it:
        good = []
        for rel in index[name]:
            box = boxes.get(rel.rsplit(".", 1)[0])
            try:
                arr, wh = _load_image(root / rel, size, box, margin)
                mk = load_mask(mask_path(root / rel), size, wh, box, margin) if masks else None
                good.append((rel, (arr, mk)))
            except ImageReadError:
                if not skip_broken:
                    raise
                skipped.append(rel)
        if len(good) < min_images:
            raise DatasetError(f"identity '{name}' has {len(good)} readable images, fewer than min_images={min_images}")
        c = split_identity(len(good), split, rng)
        for (rel, (arr, mk)), code in zip(good, c):
            images.append(arr)
            part_masks.append(mk)
            labels.append(label)
            codes.append(code)
            paths.append(rel)
    attrs = {
        "root": str(root.resolve()),
        "size": size,
        "identities": len(chosen),
        "min_images": min_images,
        "split_fractions": list(split),
        "seed": seed,
        "margin": margin,
        "boxes": bool(boxes),
        "skipped": len(skipped),
        "masks": masks,
    }
    arrays = {
        "images": np.stack(images),
        "labels": np.asarray(labels, np.int64),
        "split": np.asarray(codes, np.uint8),
        "identities": np.asarray(chosen, dtype=object),
        "paths": np.asarray(paths, dtype=object),
    }
    if masks:
        arrays["masks"] = np.stack(part_masks)
    write_h5(out, arrays, attrs)
    codes_arr = np.asarray(codes)
    return {
        **attrs,
        "n": len(images),
        **{k: int((codes_arr == v).sum()) for k, v in SPLITS.items()},
        "skipped_files": skipped,
    }


def load_prepared(path: str | os.PathLike) -> Prepared:
    """Read a store written by :func:`prepare` (with its part masks when it has them)."""
    attrs = read_attrs(path)
    d = read_h5(path, ["images", "labels", "split", "identities", "paths"] + (["masks"] if attrs.get("masks") else []))
    return Prepared(
        images=d["images"],
        labels=d["labels"].astype(np.int64),
        split=d["split"],
        identities=[str(s) for s in d["identities"]],
        paths=[str(s) for s in d["paths"]],
        attrs=attrs,
        masks=d.get("masks"),
    )
