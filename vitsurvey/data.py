"""Data sets, found offline where possible and downloaded only where allowed.

Fashion-MNIST is the default: 70k greyscale 28 x 28 images in 10 classes, small enough to train a
ViT on a laptop CPU, and shipped by Debian (package ``dataset-fashion-mnist``) so that it works with
no network. A seeded, class-balanced subset of it (``fashion_mnist_subset``: 6,000 training and
2,000 test images) ships inside this package, so the smoke profile and the tests need no data set at
all, and the ``cpu`` and ``gpu`` profiles fall back to it, under its own name, where the full set is
neither found nor downloadable (:func:`resolve`). CIFAR-10, CIFAR-100 and any ImageFolder tree load
where the user has them. A synthetic, learnable set serves unit tests.

Where data is looked for, in order: the ``root`` argument; else ``$VITSURVEY_DATA`` and the known
locations (``~/.cache/vitsurvey``, Debian's ``/usr/share/datasets``). Downloads go to ``root`` (or
``$VITSURVEY_DATA``, or the cache) and happen only when ``download`` allows it: ``None`` means "yes,
unless ``$VITSURVEY_OFFLINE`` is set", which tests and the smoke profile set.

The MNIST-style and CIFAR files are read by this module itself (a few lines each), so the readers can
be tested on small files the tests write; torchvision is used only to download.
"""

from __future__ import annotations

import difflib
import gzip
import os
import pickle
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from . import _compat
from .checks import whole
from .paths import ENV_DATA as ENV_ROOT
from .paths import data_root as default_root
from .paths import env_flag

if TYPE_CHECKING:
    from .profiles import Profile

__all__ = [
    "DATASETS", "DEBIAN_DATASETS", "DataFileError", "DatasetInfo", "DatasetNotFoundError", "EMBEDDED_DIR",
    "ENV_OFFLINE", "ENV_ROOT", "FALLBACKS", "MAX_VAL_SHARE", "SAMPLE_SEED", "SPLITS", "SUBSET_PER_CLASS",
    "SUBSET_SEED", "available", "balanced_selection", "build_subset", "default_root", "describe", "downloadable",
    "find_all", "from_pixels", "load", "loaders", "offline", "read_idx", "resolve", "search_roots",
    "split_validation", "standardise", "subset", "synthetic", "tensor_loader", "to_pixels", "training_images",
    "validation_images", "write_idx",
]

ENV_OFFLINE = "VITSURVEY_OFFLINE"
DEBIAN_DATASETS = Path("/usr/share/datasets")
EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded" / "fashion-mnist-subset"
"""The shipped subset: the four IDX files of Fashion-MNIST's layout, plus its selection and README."""
SUBSET_PER_CLASS = {"train": 600, "test": 200}
SUBSET_SEED = 0
SAMPLE_SEED = 0
"""The seed of the subsets a profile takes of a data set (``train_samples``, ``test_samples``, the validation
images): fixed, so that every training seed, and every model, meets the same images."""
MAX_VAL_SHARE = 5
"""At most 1 / MAX_VAL_SHARE of a training split is held out for validation."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    img_size: int | None
    """Native side length in pixels (``None``: varies, as in an ImageFolder tree)."""
    num_classes: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    """Per-channel statistics of the training split, used to standardise inputs."""
    how_to_get: str


DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", 1, 28, 10, (0.2860,), (0.3530,),
        "on Debian/Ubuntu `apt-get install dataset-fashion-mnist` (works offline); elsewhere "
        "run once with a network and download allowed (download=True, VITSURVEY_OFFLINE unset)",
    ),
    "fashion_mnist_subset": DatasetInfo(
        "fashion_mnist_subset", 1, 28, 10, (0.2860,), (0.3530,),
        "shipped with vitsurvey (vitsurvey/embedded/fashion-mnist-subset); always available",
    ),
    "cifar10": DatasetInfo(
        "cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        "run once with a network and download allowed, or unpack cifar-10-python.tar.gz into the root",
    ),
    "cifar100": DatasetInfo(
        "cifar100", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        "run once with a network and download allowed, or unpack cifar-100-python.tar.gz into the root",
    ),
    "imagefolder": DatasetInfo(
        "imagefolder", 3, None, None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
        "pass root=DIR where DIR/train/<class>/*.png and DIR/val/<class>/*.png exist",
    ),
    "synthetic": DatasetInfo("synthetic", 1, 28, 10, (0.0,), (1.0,), "always available"),
}
SPLITS = ("train", "test")


class DatasetNotFoundError(FileNotFoundError):
    """A data set was not found where we looked, and could not (or may not) be downloaded."""


def _check_name(name: str) -> DatasetInfo:
    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=3)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"Unknown data set {name!r}.{hint} Known: {', '.join(DATASETS)}.")
    return DATASETS[name]


def search_roots(root: str | Path | None = None) -> list[Path]:
    """The directories searched, in order: only ``root`` when given, else the env and known places."""
    return [Path(root).expanduser()] if root is not None else list(dict.fromkeys([default_root(), DEBIAN_DATASETS]))


def offline() -> bool:
    """Whether ``$VITSURVEY_OFFLINE`` forbids downloads (tests and the smoke profile set it)."""
    return bool(env_flag(ENV_OFFLINE))


# --------------------------------------------------------------------------- file readers
class DataFileError(ValueError):
    """A data set file that is damaged or disagrees with its partner: found, but not usable."""


_REFETCH = ("delete it and run again to download it afresh (with downloads allowed), or copy an intact "
            "one in its place")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format: magic, big-endian sizes, raw bytes), gzipped or not. A file cut
    off or corrupted (a download that did not finish) raises :class:`DataFileError` naming it."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataFileError(f"{path} is damaged ({exc}); {_REFETCH}.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataFileError(f"{path} is not an unsigned-byte IDX file (bad magic number); {_REFETCH}.")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataFileError(f"{path} is cut off inside its header; {_REFETCH}.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataFileError(f"{path}: its header says {shape} ({int(np.prod(shape))} bytes) but it holds "
                            f"{data.size} bytes; {_REFETCH}.")
    return data.reshape(shape)


def _checked(images: np.ndarray, labels: np.ndarray, name: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels that belong together: as many of each, every label a class of ``name``. Caught here,
    at load time, rather than as an index error deep inside training."""
    if len(images) != len(labels):
        raise DataFileError(f"{where}: {len(images)} images but {len(labels)} labels; the files do not belong "
                            "together (one is from another split or cut off): replace them with an intact pair.")
    classes = DATASETS[name].num_classes
    if classes is not None and len(labels):
        bad = np.flatnonzero((labels < 0) | (labels >= classes))
        if bad.size:
            raise DataFileError(f"{where}: label {int(labels[bad[0]])} at position {int(bad[0])} (and {bad.size - 1} "
                                f"more) lies outside {name}'s classes 0-{classes - 1}; replace the labels file.")
    return images, labels


_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Directory layouts in which the four files are found: torchvision's download and Debian's package.
_FMNIST_DIRS = ("FashionMNIST/raw", "fashion-mnist")


def _find_fashion_mnist(roots: list[Path], split: str, dirs: tuple[str, ...] = _FMNIST_DIRS) -> tuple[Path, Path] | None:
    for root in roots:
        for sub in dirs:
            found = [next((f for f in (root / sub / stem, root / sub / f"{stem}.gz") if f.is_file()), None)
                     for stem in _FMNIST_FILES[split]]
            if found[0] and found[1]:
                return found[0], found[1]
    return None


_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_CIFAR_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
    (f"numpy.{core}.{module}", name) for core in ("core", "_core")
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}
"""The only globals a CIFAR batch's pickle names: how numpy rebuilds an array (and how Python 3 writes bytes at
protocol 2). Dicts, lists, bytes, str and ints need none."""


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR batch holds and nothing else: a planted pickle cannot name a function to call."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never holds (it was not "
                                         "loaded: unpickling it could run code)")
        return super().find_class(module, name)


def _read_cifar(root: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """CIFAR's python pickles: dicts with b'data' (N x 3072 uint8, channel-major) and labels."""
    folder = root / _CIFAR_FOLDERS[name]
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        key = b"labels"
    else:
        files = ["train" if split == "train" else "test"]
        key = b"fine_labels"
    if not all((folder / f).is_file() for f in files):
        return None
    images, labels = [], []
    for f in files:
        try:
            with open(folder / f, "rb") as fh:
                batch = _CifarUnpickler(fh, encoding="bytes").load()
        except pickle.UnpicklingError as exc:
            raise DataFileError(f"{folder / f} is damaged or not a CIFAR batch ({exc}); {_REFETCH}.") from None
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
            raise DataFileError(f"{folder / f} is damaged ({type(exc).__name__}); {_REFETCH}.") from None
        if not isinstance(batch, dict) or b"data" not in batch or key not in batch:
            raise DataFileError(f"{folder / f} is not a CIFAR batch (no images or labels in it); {_REFETCH}.")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


_DOWNLOADERS = {"fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}
"""torchvision's class for each data set that can be downloaded."""


def _download(name: str, root: Path) -> None:
    _compat.ensure_torchvision_importable()
    import torchvision.datasets as tvd

    cls = getattr(tvd, _DOWNLOADERS[name])
    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        cls(str(root), train=train, download=True)


def _read(name: str, split: str, roots: list[Path]) -> tuple[np.ndarray, np.ndarray] | None:
    if name in ("fashion_mnist", "fashion_mnist_subset"):
        files = (_find_fashion_mnist(roots, split) if name == "fashion_mnist"  # the subset: only the shipped copy
                 else _find_fashion_mnist([EMBEDDED_DIR.parent], split, (EMBEDDED_DIR.name,)))
        if files is None:
            return None
        images, labels = (read_idx(f) for f in files)
        # the channel axis added
        return _checked(images[:, None], labels.astype(np.int64), name, f"{files[0]} and {files[1]}")
    for root in roots:
        arrays = _read_cifar(root, name, split)
        if arrays is not None:
            return _checked(*arrays, name, str(root / _CIFAR_FOLDERS[name]))
    return None


# --------------------------------------------------------------------------- public API
def standardise(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 with the data set's per-channel mean 0 and std 1."""
    return from_pixels(images.float() / 255.0, info)


def _stats(info: DatasetInfo, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor(v, dtype=dtype).view(1, -1, 1, 1) for v in (info.mean, info.std))


def from_pixels(pixels: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """Pixels in [0, 1] (N, C, H, W) -> the standardised inputs the models take."""
    mean, std = _stats(info, pixels.dtype)
    return (pixels - mean) / std


def to_pixels(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """Standardised inputs -> pixels in [0, 1] (the inverse of :func:`from_pixels`): where perturbations that
    are defined on pixels (noise, contrast, an attack's epsilon) are applied."""
    mean, std = _stats(info, images.dtype)
    return images * std + mean


def synthetic(n: int, split: str = "train", num_classes: int = 10, img_size: int = 28, channels: int = 1) -> TensorDataset:
    """A learnable toy set: each class is a fixed random pattern, each sample that pattern plus noise.
    The class patterns are the same for every split; the noise differs by split. Deterministic."""
    g = torch.Generator().manual_seed(1234)
    templates = torch.randn(num_classes, channels, img_size, img_size, generator=g)
    g.manual_seed(0 if split == "train" else 1)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    noise = torch.randn(n, channels, img_size, img_size, generator=g)
    return TensorDataset(templates[labels] + noise, labels)


def load(name: str = "fashion_mnist", split: str = "train", root: str | Path | None = None,
         download: bool | None = None, img_size: int | None = None) -> Dataset:
    """Load a data set split as standardised float tensors (an ImageFolder tree as a lazy dataset).

    ``img_size`` resizes (bilinear) when it differs from the native size. A data set that is not
    found, and may not be downloaded, raises :class:`DatasetNotFoundError` saying where we looked
    and how to get it.
    """
    info = _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    if img_size is not None:
        whole("img_size", img_size, minimum=1, hint="It is the side in pixels images are resized to.")
    if name == "synthetic":
        return synthetic(2048 if split == "train" else 512, split, img_size=img_size or 28)
    if name == "imagefolder":
        return _imagefolder(root, split, img_size or 224, info)

    roots = search_roots(root)
    arrays = _read(name, split, roots)
    if arrays is None:
        allowed = ((not offline()) if download is None else download) and name in _DOWNLOADERS
        target = Path(root).expanduser() if root is not None else default_root()
        cause = "downloading is off (download=False or $VITSURVEY_OFFLINE is set)"
        if allowed:
            try:
                _download(name, target)
                arrays = _read(name, split, [target])
            except Exception as exc:  # network errors come in many types
                cause = f"the download to {target} failed: {type(exc).__name__}: {exc}"
        if arrays is None:
            looked = ", ".join(str(r) for r in roots)
            raise DatasetNotFoundError(
                f"Data set {name!r} ({split}) was not found; looked in: {looked}; {cause}. To get it: "
                f"{info.how_to_get}; or point ${ENV_ROOT} (or root=) at a directory that holds it.")
    images = standardise(torch.from_numpy(arrays[0].copy()), info)
    if img_size is not None and img_size != images.shape[-1]:
        images = torch.nn.functional.interpolate(images, size=(img_size, img_size), mode="bilinear",
                                                 align_corners=False)
    return TensorDataset(images, torch.from_numpy(arrays[1]))


def _read_image(path: str) -> object:
    """An ImageFolder image as RGB; one that cannot be decoded (cut off, not an image) is named."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataFileError(f"{path} is not a readable image ({exc}); remove it or replace it with an intact "
                            "copy.") from None


def _imagefolder(root: str | Path | None, split: str, img_size: int, info: DatasetInfo) -> Dataset:
    """One split of an ImageFolder tree, its classes numbered by the training split's class folders (sorted), so
    that a class means the same label in every split even where a split lacks some classes."""
    if root is None and os.environ.get(ENV_ROOT):
        root = os.environ[ENV_ROOT]
    if root is None:
        raise DatasetNotFoundError(f"An ImageFolder data set needs a location: {info.how_to_get}.")
    candidates = [Path(root) / s for s in ((split,) if split == "train" else ("test", "val"))]
    folder = next((c for c in candidates if c.is_dir()), None)
    train_dir = Path(root) / "train"
    if folder is None or not train_dir.is_dir():
        looked = ", ".join(str(c) for c in (candidates if folder is None else [train_dir]))
        raise DatasetNotFoundError(f"No ImageFolder split {'train' if folder else split!r}: looked in {looked} (the "
                                   f"training split numbers the classes of every split). {info.how_to_get}.")
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DatasetNotFoundError(f"{train_dir} holds no class folders. {info.how_to_get}.")
    if len(classes) == 1 and split == "train":
        warnings.warn(f"{train_dir} holds one class ({classes[0]}): every label is the same, so any model scores "
                      "100%; add a folder per class.", stacklevel=3)
    unknown = sorted({e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")} - {*classes})
    if unknown:
        raise DataFileError(f"{folder}: class folder(s) {', '.join(unknown)} are not among the training classes in "
                            f"{train_dir} ({', '.join(classes)}); a model cannot learn a class it never sees: add "
                            "them to the training split, or remove them.")
    _compat.ensure_torchvision_importable()
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize(img_size), transforms.CenterCrop(img_size), transforms.ToTensor(),
                             transforms.Normalize(info.mean, info.std)])
    ds = datasets.ImageFolder(str(folder), transform=tf, loader=_read_image)
    label = {c: classes.index(c) for c in ds.classes}  # this split's numbering -> the training split's
    ds.samples = ds.imgs = [(path, label[ds.classes[t]]) for path, t in ds.samples]
    ds.targets = [t for _, t in ds.samples]
    ds.classes, ds.class_to_idx = classes, {c: i for i, c in enumerate(classes)}
    return ds


def tensor_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool = False,
                  seed: int = 0) -> DataLoader:
    """A loader over tensors already in memory: in order, or shuffled by a seeded generator (then the last
    short batch is dropped when there is at least one full batch, so batch statistics never see one image)."""
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None,
                      drop_last=shuffle and len(labels) >= batch_size)


def subset(ds: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """A seeded random subset of ``n`` items (the whole set when ``n`` is None or too large)."""
    size = len(ds)  # type: ignore[arg-type]
    if n is None or n >= size:
        return ds
    if n <= 0:
        raise ValueError(f"A subset needs at least one item, not {n}.")
    idx = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    if isinstance(ds, TensorDataset):
        return TensorDataset(*(t[idx] for t in ds.tensors))
    return torch.utils.data.Subset(ds, idx.tolist())


def split_validation(train: Dataset, n: int | None, seed: int = SAMPLE_SEED) -> tuple[Dataset, Dataset | None]:
    """Hold ``n`` seeded images of a training split out for validation: (the rest, to train on; the held-out
    images), disjoint. ``None`` or 0 holds nothing out, and never more than a fifth of the split is held out (a
    small ImageFolder tree keeps most of its images for training).

    Why: every choice a notebook makes (a quantizer, a temperature, a variant, a keep rate, when to stop) is made
    on these images, never on the test set, which each final model then meets once; and no model is trained on
    them, so a choice made with a trained model is not made on images it has seen.
    """
    size = len(train)  # type: ignore[arg-type]
    if n is not None and n < 0:
        raise ValueError(f"val_samples must be a whole number >= 0 (or None), not {n}.")
    n = min(n or 0, size // MAX_VAL_SHARE)
    if not n:
        return train, None
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    held, rest = order[:n].sort().values, order[n:].sort().values
    if isinstance(train, TensorDataset):
        return TensorDataset(*(t[rest] for t in train.tensors)), TensorDataset(*(t[held] for t in train.tensors))
    return torch.utils.data.Subset(train, rest.tolist()), torch.utils.data.Subset(train, held.tolist())


def training_images(profile: Profile, root: str | Path | None = None, download: bool | None = None,
                    img_size: int | None = None) -> Dataset:
    """The profile's training images: the training split less its validation images, then the profile's
    ``train_samples`` of them (drawn with :data:`SAMPLE_SEED`); ``img_size`` as in :func:`load`."""
    rest, _ = split_validation(load(profile.dataset, "train", root, download, img_size), profile.val_samples)
    return subset(rest, profile.train_samples, SAMPLE_SEED)


def validation_images(profile: Profile, root: str | Path | None = None, download: bool | None = None) -> Dataset:
    """The profile's validation images (``val_samples`` of the training split, never trained on): where every
    choice is made. Raises ValueError for a profile that holds none out."""
    _, held = split_validation(load(profile.dataset, "train", root, download), profile.val_samples)
    if held is None:
        raise ValueError(f"The {profile.name!r} profile holds no validation images (val_samples is "
                         f"{profile.val_samples!r}); set val_samples to make choices on a validation split.")
    return held


def loaders(profile: Profile, root: str | Path | None = None, download: bool | None = None,
            img_size: int | None = None) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders of the profile's data set, sized by the profile. The training images exclude the
    validation images (:func:`validation_images`). The subsets of images are drawn with :data:`SAMPLE_SEED`, the same
    for every training seed, so models trained with different seeds meet the same images; the training order
    follows the profile's ``seed``. ``img_size``: the side images are resized to, as in :func:`load`."""
    train = training_images(profile, root, download, img_size)
    test = subset(load(profile.dataset, "test", root, download, img_size), profile.test_samples, SAMPLE_SEED)
    g = torch.Generator().manual_seed(profile.seed)
    return (
        DataLoader(train, batch_size=profile.batch_size, shuffle=True, generator=g, drop_last=True),
        DataLoader(test, batch_size=max(256, profile.batch_size)),
    )


def find_all() -> dict[str, str]:
    """Where each file-backed data set was found (or 'not found'), without downloading anything."""
    roots = search_roots()
    fmnist = _find_fashion_mnist(roots, "train")
    report = {"fashion_mnist": str(fmnist[0].parent) if fmnist else "not found"}
    subset_files = _find_fashion_mnist([EMBEDDED_DIR.parent], "train", (EMBEDDED_DIR.name,))
    report["fashion_mnist_subset"] = "shipped with vitsurvey" if subset_files else "missing from this install"
    for name, folder in _CIFAR_FOLDERS.items():
        hits = [r / folder for r in roots if (r / folder).is_dir()]
        report[name] = str(hits[0]) if hits else "not found"
    return report


# --------------------------------------------------------------------------- the profile's data


FALLBACKS = {"fashion_mnist": "fashion_mnist_subset"}
"""Where a profile's data set is missing and cannot be downloaded, the shipped data set used instead."""


def available(name: str, root: str | Path | None = None, download: bool | None = None) -> bool:
    """Whether ``name`` can be loaded: found on disk, or downloaded now if downloading is allowed."""
    info = _check_name(name)
    if name in ("synthetic", "fashion_mnist_subset"):
        return True
    if name == "imagefolder":
        where = root or os.environ.get(ENV_ROOT)
        return where is not None and (Path(where) / "train").is_dir()
    roots = search_roots(root)
    if all(_read_exists(name, split, roots) for split in SPLITS):
        return True
    if not ((not offline()) if download is None else download) or name not in _DOWNLOADERS:
        return False
    target = Path(root).expanduser() if root is not None else default_root()
    try:
        _download(name, target)
    except Exception:  # network errors come in many types; "not available" is the answer
        return False
    return all(_read_exists(name, split, [target]) for split in SPLITS)


def downloadable(name: str) -> bool:
    """Whether ``name`` is a data set this module knows how to download."""
    return name in _DOWNLOADERS


def _read_exists(name: str, split: str, roots: list[Path]) -> bool:
    if name == "fashion_mnist":
        return _find_fashion_mnist(roots, split) is not None
    folder = _CIFAR_FOLDERS.get(name)
    return folder is not None and any((r / folder).is_dir() for r in roots)


def resolve(profile: Profile, root: str | Path | None = None, download: bool | None = None) -> Profile:
    """The profile with the data set it will actually use.

    Unchanged where its data set is available (found, or downloaded now where allowed). Where not,
    and a shipped fallback exists (Fashion-MNIST -> its embedded subset), the profile switches to the
    fallback by name, so every output, figure title, results row and checkpoint that names
    ``profile.dataset`` says which data was used; the fallback's splits are used whole.
    """
    if available(profile.dataset, root, download) or profile.dataset not in FALLBACKS:
        return profile
    return profile.replace(dataset=FALLBACKS[profile.dataset], train_samples=None, test_samples=None)


def describe(name: str) -> str:
    """One line naming a data set and its size, for outputs and figure titles."""
    if name == "fashion_mnist":
        return "Fashion-MNIST"
    if name == "fashion_mnist_subset":
        n = SUBSET_PER_CLASS
        return f"Fashion-MNIST subset ({10 * n['train']:,} train / {10 * n['test']:,} test, shipped)"
    return name


# --------------------------------------------------------------------------- building the shipped subset


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (byte-for-byte reproducible: no time stamp)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(header + array.tobytes())


def balanced_selection(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of ``per_class`` items of every class, chosen by a seeded permutation, in ascending order."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"Class {c} has {len(members)} items, fewer than the {per_class} asked for.")
        chosen.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(chosen))


def build_subset(
    source: str | Path, out_dir: str | Path = EMBEDDED_DIR,
    per_class: dict[str, int] | None = None, seed: int = SUBSET_SEED,
) -> dict[str, np.ndarray]:
    """Write the shipped subset from full Fashion-MNIST found under ``source``; return the indices.

    Per split, ``per_class`` images of each class are drawn by :func:`balanced_selection` with
    ``seed`` and written as IDX files in the original layout, with ``selection.csv`` (split, index in
    the original split, label) beside them. This is how ``vitsurvey/embedded`` was made.
    """
    per_class = per_class or SUBSET_PER_CLASS
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    picked: dict[str, np.ndarray] = {}
    lines = ["split,source_index,label"]
    for split, (img_stem, lbl_stem) in _FMNIST_FILES.items():
        files = _find_fashion_mnist([Path(source)], split)
        if files is None:
            raise DatasetNotFoundError(f"Full Fashion-MNIST ({split}) not found under {source}.")
        images, labels = read_idx(files[0]), read_idx(files[1])
        idx = balanced_selection(labels, per_class[split], seed)
        write_idx(out / f"{img_stem}.gz", images[idx])
        write_idx(out / f"{lbl_stem}.gz", labels[idx])
        lines += [f"{split},{i},{labels[i]}" for i in idx]
        picked[split] = idx
    (out / "selection.csv").write_text("\n".join(lines) + "\n")
    return picked
