"""What must never happen to a user's data, files or numbers, and bad input that must fail with a clear message:
each test reproduces one failure that was once possible and checks that it no longer is."""

from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vitsurvey import checkpoints, data, measure, metrics, results, train
from vitsurvey.__main__ import main
from vitsurvey.models import ViTConfig, VisionTransformer, create
from vitsurvey.profiles import PROFILES
from vitsurvey.strategies import pruning, quant, tokens

SMALL = ViTConfig(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2)
TINY = PROFILES["smoke"].replace(dataset="synthetic", train_samples=128, test_samples=64, epochs=1, batch_size=32,
                                 augment=False)
SYNTHETIC = ["train", "--profile", "smoke", "--dataset", "synthetic", "--epochs", "1", "--batch-size", "32",
             "--train-samples", "128", "--test-samples", "64", "--no-augment"]


class _Planted:
    """A pickle that runs a shell command when loaded: what a planted data or checkpoint file would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _folder(root, splits, n=12, size=8, seed=0):
    """An ImageFolder tree: ``splits`` maps a split to its classes; each class a grey level plus noise."""
    rng = np.random.default_rng(seed)
    grey = {"a": 230, "b": 128, "c": 25}
    for split, classes in splits.items():
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(grey[c] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


# --------------------------------------------------------------------------- 1. labels of an ImageFolder tree
def test_a_validation_split_missing_a_class_keeps_the_training_labels(tmp_path):
    root = _folder(tmp_path, {"train": "abc", "val": "ac"}, n=2)
    test = data.load("imagefolder", "test", root=root, img_size=8)
    assert test.classes == ["a", "b", "c"]
    assert sorted(set(test.targets)) == [0, 2]  # c is class 2 in training, so it is class 2 here (not 1)
    assert [test[i][1] for i in range(len(test))] == [0, 0, 2, 2]


def test_train_on_an_imagefolder_whose_validation_lacks_a_class(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VITSURVEY_OUTPUT", str(tmp_path / "out"))
    root = _folder(tmp_path / "R", {"train": "abc", "val": "ac"})
    assert main(["train", "--model", "teacher", "--dataset", "imagefolder", "--root", str(root), "--profile",
                 "smoke", "--batch-size", "4", "--epochs", "6"]) == 0
    assert "test top-1 100.00%" in capsys.readouterr().out  # with c numbered 1 in val, at most 50% could be right


def test_a_test_class_unknown_to_training_is_named(tmp_path):
    root = _folder(tmp_path, {"train": "ab", "val": "ac"}, n=1)
    with pytest.raises(data.DataFileError, match=r"class folder\(s\) c are not among the training classes"):
        data.load("imagefolder", "test", root=root)


def test_a_one_class_imagefolder_warns(tmp_path):
    root = _folder(tmp_path, {"train": "a", "val": "a"}, n=1)
    with pytest.warns(UserWarning, match="holds one class"):
        data.load("imagefolder", "train", root=root)


def test_a_corrupt_image_is_named(tmp_path):
    root = _folder(tmp_path, {"train": "ab", "val": "ab"}, n=1)
    bad = root / "train" / "a" / "broken.jpg"
    Image.new("RGB", (32, 32), (10, 20, 30)).save(bad)
    bad.write_bytes(bad.read_bytes()[:60])  # cut off mid-file
    ds = data.load("imagefolder", "train", root=root, img_size=8)
    index = [p for p, _ in ds.samples].index(str(bad))
    with pytest.raises(data.DataFileError, match="broken.jpg is not a readable image"):
        ds[index]


def test_the_baseline_trains_on_large_imagefolder_images_and_sizes_are_checked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VITSURVEY_OUTPUT", str(tmp_path / "out"))
    root = _folder(tmp_path / "R", {"train": "ab", "val": "ab"}, n=6, size=224)
    args = ["train", "--dataset", "imagefolder", "--root", str(root), "--profile", "smoke", "--batch-size", "4",
            "--epochs", "1"]
    assert main(args) == 0  # the baseline adapts to 3 channels, 2 classes and the profile's image size
    assert main([*args, "--img-size", "30", "--checkpoint", str(tmp_path / "s.pt")]) == 2
    assert "not a multiple of the baseline's patch size 4; set --img-size" in capsys.readouterr().err
    assert main([*args, "--img-size", "0"]) == 2
    assert "--img-size must be positive" in capsys.readouterr().err


def test_synthetic_images_of_no_pixels_are_refused():
    with pytest.raises(ValueError, match="img_size must be a whole number of at least 1, got 0"):
        data.load("synthetic", img_size=0)


# --------------------------------------------------------------------------- 4. planted pickles
def test_a_planted_cifar_batch_runs_no_code(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": _Planted(marker), b"labels": [0]}))
    monkeypatch.setenv(data.ENV_ROOT, str(tmp_path))
    with pytest.raises(data.DataFileError, match="names posix.system, which a CIFAR batch never holds"):
        data.load("cifar10", download=False)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_real_cifar_batch_still_loads(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"batch_label": b"training batch", b"labels": [3, 1], b"filenames": [b"x.png", b"y.png"],
             b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072) % 251}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    x, y = data.load("cifar10", "test", root=tmp_path, download=False).tensors
    assert y.tolist() == [3, 1] and x.shape == (2, 3, 32, 32)


def test_a_planted_checkpoint_is_refused_as_holding_python_objects(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Planted(marker), "result": {}, "config": {}}, path)
    with pytest.raises(checkpoints.CheckpointError, match="holds Python objects.*posix.system") as info:
        checkpoints.load_checkpoint(path)
    assert "cut off" not in str(info.value) and not marker.exists()


# --------------------------------------------------------------------------- 5. links and full disks
def test_appending_through_a_symlink_writes_its_target(out, tmp_path):
    elsewhere = tmp_path / "shared" / "rows.csv"
    results.append("rows", [{"method": "a"}], "smoke")
    elsewhere.parent.mkdir()
    os.replace(out / "rows.csv", elsewhere)
    (out / "rows.csv").symlink_to(elsewhere)
    results.append("rows", [{"method": "b"}], "smoke")
    assert (out / "rows.csv").is_symlink()
    assert pd.read_csv(elsewhere)["method"].tolist() == ["a", "b"]
    assert not list(out.glob(".rows.csv.*.tmp")) and not list(elsewhere.parent.glob(".rows.csv.*.tmp"))


def test_a_full_disk_names_the_file_and_keeps_the_old_one(out, tmp_path, monkeypatch):
    results.append("rows", [{"method": "a"}], "smoke")
    before = (out / "rows.csv").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(results.os, "fsync", full)
    with pytest.raises(OSError, match=rf"No space left on device while writing {out / 'rows.csv'}") as info:
        results.append("rows", [{"method": "b"}], "smoke")
    assert info.value.errno == errno.ENOSPC
    assert (out / "rows.csv").read_bytes() == before and not list(out.glob(".rows.csv.*.tmp"))
    with pytest.raises(OSError, match="while writing .*state.pt"):
        checkpoints.save_training_state(tmp_path / "state.pt", {"epoch": 1})


def test_a_full_disk_during_training_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VITSURVEY_OUTPUT", str(tmp_path))
    monkeypatch.setattr(results.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    assert main([*SYNTHETIC, "--checkpoint", str(tmp_path / "state.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: No space while writing") and "state.pt" in err and "Traceback" not in err


# --------------------------------------------------------------------------- 6. numbers in tables
def test_eer_refuses_an_infinite_cost_naming_its_column():
    table = pd.DataFrame({"macs": [1.0, 2.0, float("inf")], "error": [10.0, 20.0, 30.0]})
    with pytest.raises(ValueError, match="column 'macs' holds inf"):
        metrics.efficient_error_rate(table, {"macs": 1.0})
    with pytest.raises(ValueError, match="not a finite number"):
        metrics.efficient_error_rate(table.iloc[:2], {"macs": 1.0}, reference={"macs": float("inf"), "error": 1.0})


def test_pareto_front_refuses_text_but_keeps_missing_values_off_the_front():
    with pytest.raises(ValueError, match="column 'top1' holds 'abc'"):
        metrics.pareto_front(pd.DataFrame({"top1": [70, "abc"], "macs": [1, 2]}), {"top1": "max", "macs": "min"})
    front = metrics.pareto_front(pd.DataFrame({"top1": [70, "", None], "macs": [1, 0.5, 0.1]}),
                                 {"top1": "max", "macs": "min"})
    assert front.tolist() == [True, False, False]


def test_a_results_file_with_text_for_a_number_is_named_with_its_line(out):
    results.append("rows", [{"method": "a", "top1": 70.5}, {"method": "b", "top1": 71.5}], "smoke")
    path = out / "rows.csv"
    path.write_text(path.read_text().replace("71.5", "abc"))
    with pytest.raises(results.ResultsFileError, match=rf"{path}, line 3: top1 is 'abc', not a number"):
        results.read("rows")


def test_a_results_file_with_a_byte_order_mark_is_read(out):
    results.append("rows", [{"method": "a", "top1": 70.0}], "smoke")
    path = out / "rows.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as a spreadsheet program saves UTF-8
    assert results.read("rows")["method"].tolist() == ["a"]
    results.append("rows", [{"method": "b"}], "smoke")
    assert results.read("rows")["method"].tolist() == ["a", "b"]


# --------------------------------------------------------------------------- training states and reruns
def test_raising_the_epochs_of_a_training_names_what_differs(tmp_path):
    model = VisionTransformer(train.baseline_config(TINY))
    tr, te = data.loaders(TINY)
    train.fit(model, tr, te, TINY, log=None, resume=tmp_path / "state.pt")
    with pytest.raises(checkpoints.CheckpointError, match="epochs: 1 then, 2 now.*cannot be extended"):
        train.fit(model, tr, te, TINY.replace(epochs=2), log=None, resume=tmp_path / "state.pt")
    with pytest.raises(checkpoints.CheckpointError, match=r"baseline\.depth: 2 then, 3 now"):
        deeper = TINY.replace(baseline=dataclasses.replace(TINY.baseline, depth=TINY.baseline.depth + 1))
        train.fit(VisionTransformer(train.baseline_config(deeper)), tr, te, deeper, log=None,
                  resume=tmp_path / "state.pt")


def test_rerunning_a_finished_training_appends_no_second_row(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VITSURVEY_OUTPUT", str(tmp_path))
    assert main(SYNTHETIC) == 0
    assert main(SYNTHETIC) == 0
    assert "already in train.csv (nothing appended)" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "data" / "results" / "train.csv")) == 1


# --------------------------------------------------------------------------- measuring
def _mixed_modes() -> VisionTransformer:
    model = VisionTransformer(SMALL).train()
    model.blocks[0].eval()  # a frozen block inside a model in training
    return model


def _modes(model):
    return [m.training for m in model.modules()]


@pytest.mark.parametrize("measure_it", [
    lambda m: measure.throughput(m, (1, 28, 28), (2,), warmup=0, iters=1),
    lambda m: measure.latency_ms(m, (1, 28, 28), warmup=0, iters=1),
    lambda m: measure.pass_times_ms(m, (1, 28, 28), 1, 1),
    lambda m: measure.inference_memory(m, (1, 28, 28), 2),
    lambda m: measure.training_memory(m, (1, 28, 28), 2),
    lambda m: measure.count_macs(m, torch.zeros(1, 1, 28, 28)),
], ids=["throughput", "latency_ms", "pass_times_ms", "inference_memory", "training_memory", "count_macs"])
def test_measuring_leaves_each_module_in_its_mode(measure_it):
    model = _mixed_modes()
    before = _modes(model)
    measure_it(model)
    assert _modes(model) == before and before[0] and not model.blocks[0].training


@pytest.mark.parametrize("measure_it, name", [
    (lambda m: measure.inference_memory(m, (1, 28, 28), 0), "batch_size"),
    (lambda m: measure.training_memory(m, (1, 28, 28), 0), "batch_size"),
])
def test_memory_of_no_images_is_refused(measure_it, name):
    with pytest.raises(ValueError, match=f"{name} must be a whole number of at least 1, got 0"):
        measure_it(VisionTransformer(SMALL))


@pytest.mark.parametrize("measure_it", [
    lambda m: measure.count_macs(m, torch.zeros(1, 1, 28, 28)),
    lambda m: measure.throughput(m, (1, 28, 28), (1,)),
    lambda m: measure.inference_memory(m, (1, 28, 28)),
])
def test_a_model_on_the_meta_device_is_refused(measure_it):
    with torch.device("meta"):
        model = VisionTransformer(SMALL)
    with pytest.raises(ValueError, match="is on the meta device"):
        measure_it(model)


def test_cpu_allocation_failure_counts_as_out_of_memory(monkeypatch, capsys):
    message = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
               "allocate 602112000000000 bytes. Error code 12 (Cannot allocate memory)")
    assert measure.timing.is_oom(RuntimeError(message))

    def fail(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(measure, "benchmark", fail)
    assert main(["profile", "vit_tiny_patch16_224", "--batch-size", "1000000000", "--profile", "smoke"]) == 1
    assert capsys.readouterr().err.strip() == "error: out of memory; try a smaller --batch-size or --img-size, or " \
                                              "another profile"


def test_run_with_a_path_that_is_not_a_notebook(capsys):
    assert main(["run", "/etc/passwd"]) == 2
    assert "'/etc/passwd' is not a notebook" in capsys.readouterr().err


# --------------------------------------------------------------------------- strategies on models they do not support
@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return VisionTransformer(SMALL).eval()


@pytest.fixture(scope="module")
def int8(vit):
    return quant.dynamic_int8(vit)


def test_pruning_an_int8_model_is_refused_before_any_work(int8):
    for prune_it in (lambda: pruning.magnitude_prune(int8, 0.5), lambda: pruning.prune_structured(int8, 0.5)):
        with pytest.raises(TypeError, match="works on float nn.Linear layers.*quantized.*prune the float model first"):
            prune_it()
    assert not any(name.endswith("_mask") for name, _ in int8.named_buffers())


def test_simulated_quantization_of_a_wrapped_timm_or_int8_model_is_refused(vit, int8):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timm_model = create("vit_tiny_patch16_224")
    for model, found in ((tokens.ToMe(vit, 2), "ToMe"), (timm_model, "timm"), (int8, "quantized")):
        with pytest.raises(TypeError, match="QuantViT") as info:
            quant.QuantViT(model, quant.QuantConfig())
        assert found in str(info.value) or found == "quantized" and "float model" in str(info.value)


def test_watch_load_sees_another_process_use_a_core():
    """A busy loop in another process, while this one sleeps, shows as other processes' cores, not this one's."""
    import subprocess
    import sys
    import time

    from vitsurvey.device import watch_load

    busy_loop = "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"
    spinner = subprocess.Popen([sys.executable, "-c", busy_loop])
    try:
        time.sleep(0.3)  # the child is running
        with watch_load() as found:
            time.sleep(0.8)
    finally:
        spinner.wait()
    state = found[0]
    if state.other_cores is None:  # no /proc/stat here
        return
    assert state.own_cores < 0.2
    assert state.other_cores > 0.5
