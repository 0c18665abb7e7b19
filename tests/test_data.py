import gzip
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset
from PIL import Image

from vitsurvey import data
from vitsurvey.profiles import PROFILES


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fmnist(folder, n_train=12, n_test=6, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        img_name, lab_name = data._FMNIST_FILES[split]
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        for name, arr in ((img_name, images), (lab_name, labels)):
            payload = _idx(arr)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("layout,gz", [("FashionMNIST/raw", False), ("FashionMNIST/raw", True), ("fashion-mnist", True)])
def test_fashion_mnist_layouts(tmp_path, layout, gz):
    arrays = _write_fmnist(tmp_path / layout, gz=gz)
    ds = data.load("fashion_mnist", "train", root=tmp_path, download=False)
    x, y = ds.tensors
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.float32
    assert y.tolist() == arrays["train"][1].tolist()
    expected = (arrays["train"][0][3] / 255.0 - 0.2860) / 0.3530
    assert torch.allclose(x[3, 0], torch.from_numpy(expected).float(), atol=1e-6)
    assert len(data.load("fashion_mnist", "test", root=tmp_path, download=False)) == 6


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="bad magic"):
        data.read_idx(tmp_path / "bad")
    truncated = _idx(np.zeros((4, 28, 28), np.uint8))[:-10]
    (tmp_path / "short").write_bytes(truncated)
    with pytest.raises(ValueError, match="header says"):
        data.read_idx(tmp_path / "short")


def _write_cifar(root, name):
    rng = np.random.default_rng(1)
    if name == "cifar10":
        folder, files, key = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels"
    else:
        folder, files, key = root / "cifar-100-python", ["train", "test"], b"fine_labels"
    folder.mkdir(parents=True)
    for f in files:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), key: [1, 2, 3, 99 if name == "cifar100" else 9]}
        with open(folder / f, "wb") as fh:
            pickle.dump(batch, fh)


@pytest.mark.parametrize("name,n_train", [("cifar10", 20), ("cifar100", 4)])
def test_cifar(tmp_path, name, n_train):
    _write_cifar(tmp_path, name)
    train = data.load(name, "train", root=tmp_path, download=False)
    x, y = train.tensors
    assert x.shape == (n_train, 3, 32, 32)
    assert y[:4].tolist() == [1, 2, 3, 99 if name == "cifar100" else 9]
    assert len(data.load(name, "test", root=tmp_path, download=False)) == 4


def test_imagefolder(tmp_path):
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 30), (i * 100, 50, 200)).save(tmp_path / split / cls / f"{i}.png")
    ds = data.load("imagefolder", "train", root=tmp_path, img_size=16)
    x, y = ds[3]
    assert x.shape == (3, 16, 16) and y == 1
    assert len(data.load("imagefolder", "test", root=tmp_path)) == 4
    with pytest.raises(data.DatasetNotFoundError, match="needs a location"):
        data.load("imagefolder", "train")


def test_missing_offline_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_OFFLINE, "1")
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load("fashion_mnist", "train", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "downloading is off" in message


def test_failed_download_reports_its_cause(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_OFFLINE, raising=False)

    def no_network(name, root):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data, "_download", no_network)
    with pytest.raises(data.DatasetNotFoundError, match="network is unreachable"):
        data.load("cifar10", "train", root=tmp_path)


def test_download_is_used_when_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_download", lambda name, root: _write_cifar(root, name))
    assert len(data.load("cifar10", "test", root=tmp_path, download=True)) == 4


def test_unknown_names():
    with pytest.raises(ValueError, match="Did you mean 'cifar10'"):
        data.load("cifar-10")
    with pytest.raises(ValueError, match="Unknown split"):
        data.load("synthetic", "validation")


def test_environment_root(tmp_path, monkeypatch):
    _write_fmnist(tmp_path / "FashionMNIST" / "raw")
    monkeypatch.setenv(data.ENV_ROOT, str(tmp_path))
    assert data.search_roots()[0] == tmp_path
    assert len(data.load("fashion_mnist", "train", download=False)) == 12


def test_subset_is_seeded_and_sized():
    ds = data.synthetic(100)
    a, b, c = data.subset(ds, 10, seed=0), data.subset(ds, 10, seed=0), data.subset(ds, 10, seed=1)
    assert len(a) == 10
    assert torch.equal(a.tensors[0], b.tensors[0])
    assert not torch.equal(a.tensors[0], c.tensors[0])
    assert data.subset(ds, None) is ds and data.subset(ds, 1000) is ds
    with pytest.raises(ValueError):
        data.subset(ds, 0)


def test_synthetic_is_deterministic_and_resizable():
    a, b = data.synthetic(8), data.synthetic(8)
    assert torch.equal(a.tensors[0], b.tensors[0])
    assert data.load("synthetic", "test", img_size=32).tensors[0].shape[-1] == 32


def test_resize_on_load(tmp_path):
    _write_fmnist(tmp_path / "FashionMNIST" / "raw")
    ds = data.load("fashion_mnist", "train", root=tmp_path, download=False, img_size=56)
    assert ds.tensors[0].shape == (12, 1, 56, 56)


def test_loaders_follow_the_profile(tmp_path):
    _write_fmnist(tmp_path / "FashionMNIST" / "raw", n_train=40, n_test=20)
    p = PROFILES["smoke"].replace(train_samples=32, test_samples=10, batch_size=8)
    train, test = data.loaders(p, root=tmp_path, download=False)
    assert len(train.dataset) == 32 and len(train) == 4
    assert len(test.dataset) == 10


def test_find_all_reports_locations(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_ROOT, str(tmp_path))
    monkeypatch.setattr(data, "DEBIAN_DATASETS", tmp_path / "nothing-here")
    found = data.find_all()
    assert found.pop("fashion_mnist_subset") == "shipped with vitsurvey"
    assert set(found.values()) == {"not found"}
    _write_fmnist(tmp_path / "FashionMNIST" / "raw")
    _write_cifar(tmp_path, "cifar100")
    found = data.find_all()
    assert found["fashion_mnist"] == str(tmp_path / "FashionMNIST" / "raw")
    assert found["cifar100"] == str(tmp_path / "cifar-100-python")
    assert found["cifar10"] == "not found"


# --------------------------------------------------------------------------- the shipped subset and the fallback


def test_shipped_subset_is_balanced_and_matches_its_selection_file():
    for split, per_class in data.SUBSET_PER_CLASS.items():
        ds = data.load("fashion_mnist_subset", split)
        labels = ds.tensors[1].numpy()
        assert ds.tensors[0].shape == (10 * per_class, 1, 28, 28)
        assert np.bincount(labels).tolist() == [per_class] * 10
        selection = np.genfromtxt(data.EMBEDDED_DIR / "selection.csv", delimiter=",", dtype=None,
                                  names=True, encoding="utf-8")
        rows = selection[selection["split"] == split]
        assert len(rows) == 10 * per_class and (rows["label"] == labels).all()
        assert (np.diff(rows["source_index"]) > 0).all()  # sorted, no repeats


def test_build_subset_is_seeded_balanced_and_byte_reproducible(tmp_path):
    arrays = _write_fmnist(tmp_path / "src" / "fashion-mnist", n_train=60, n_test=30)
    per_class = {"train": 4, "test": 2}
    picked = data.build_subset(tmp_path / "src", tmp_path / "a", per_class, seed=3)
    data.build_subset(tmp_path / "src", tmp_path / "b", per_class, seed=3)
    for f in (tmp_path / "a").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name
    images = data.read_idx(tmp_path / "a" / "train-images-idx3-ubyte.gz")
    assert (images == arrays["train"][0][picked["train"]]).all()
    assert np.bincount(arrays["train"][1][picked["train"]]).tolist() == [4] * 10
    other = data.build_subset(tmp_path / "src", tmp_path / "c", per_class, seed=4)
    assert not np.array_equal(other["train"], picked["train"])
    with pytest.raises(ValueError, match="fewer than"):
        data.build_subset(tmp_path / "src", tmp_path / "d", {"train": 7, "test": 1})


def test_profiles_fall_back_to_the_shipped_subset_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_ROOT, str(tmp_path))
    monkeypatch.setenv(data.ENV_OFFLINE, "1")
    monkeypatch.setattr(data, "DEBIAN_DATASETS", tmp_path / "nothing-here")
    used = data.resolve(PROFILES["cpu"])
    assert used.dataset == "fashion_mnist_subset" and used.train_samples is None
    assert "subset" in data.describe(used.dataset)
    train, test = data.loaders(used.replace(batch_size=500))
    held = 6000 // data.MAX_VAL_SHARE  # the cpu profile asks for 5,000 validation images; a fifth of 6,000 is kept out
    assert len(train.dataset) == 6000 - held and len(test.dataset) == 2000
    assert len(data.validation_images(used)) == held
    _write_fmnist(tmp_path / "FashionMNIST" / "raw")  # once the full set is there, it is used
    assert data.resolve(PROFILES["cpu"]) is PROFILES["cpu"]


def test_a_failed_download_falls_back_instead_of_failing(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_ROOT, str(tmp_path))
    monkeypatch.delenv(data.ENV_OFFLINE, raising=False)
    monkeypatch.setattr(data, "DEBIAN_DATASETS", tmp_path / "nothing-here")

    def no_network(name, root):
        raise OSError("no network")

    monkeypatch.setattr(data, "_download", no_network)
    assert not data.available("fashion_mnist")
    assert data.resolve(PROFILES["gpu"]).dataset == "fashion_mnist_subset"


def test_smoke_profile_needs_no_data_set(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_ROOT, str(tmp_path))
    monkeypatch.setenv(data.ENV_OFFLINE, "1")
    monkeypatch.setattr(data, "DEBIAN_DATASETS", tmp_path / "nothing-here")
    smoke = PROFILES["smoke"]
    assert smoke.dataset == "fashion_mnist_subset" and data.resolve(smoke) is smoke
    train, test = data.loaders(smoke)
    assert len(train.dataset) == smoke.train_samples and len(test.dataset) == smoke.test_samples


def test_validation_images_are_held_out_of_training_and_fixed():
    p = PROFILES["smoke"]
    val = data.validation_images(p)
    train_all = data.load(p.dataset, "train")
    rest, held = data.split_validation(train_all, p.val_samples)
    assert len(val) == len(held) == p.val_samples and len(rest) + len(held) == len(train_all)
    assert torch.equal(val.tensors[0], held.tensors[0])
    # the held-out images are none of the training images, whatever the training seed
    numbered = TensorDataset(torch.arange(1000), torch.zeros(1000))
    rest_ids, held_ids = (set(d.tensors[0].tolist()) for d in data.split_validation(numbered, 100))
    assert len(held_ids) == 100 and not rest_ids & held_ids and rest_ids | held_ids == set(range(1000))
    assert set(data.split_validation(numbered, 100)[1].tensors[0].tolist()) == held_ids  # seeded: always the same
    for seed in p.training_seeds():
        expected = data.subset(rest, p.train_samples, data.SAMPLE_SEED)
        assert torch.equal(data.training_images(p.replace(seed=seed)).tensors[0], expected.tensors[0])
    kept, held_out = data.split_validation(data.synthetic(20, "train"), 1000)
    assert len(held_out) == 20 // data.MAX_VAL_SHARE and len(kept) == 16  # at most a fifth is held out
    assert data.split_validation(train_all, None) == (train_all, None)
    with pytest.raises(ValueError, match="holds no validation images"):
        data.validation_images(p.replace(val_samples=None))
    with pytest.raises(ValueError, match="val_samples must be"):
        data.split_validation(train_all, -1)
