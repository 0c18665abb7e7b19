"""Faults a user meets (damaged files, concurrent writers, killed processes, read-only folders) lose nothing and
end in a message that names the file and says what to do."""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vitsurvey import checkpoints, data, results, train
from vitsurvey.__main__ import main
from vitsurvey.profiles import PROFILES

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- results files
WRITER = """
import sys
from vitsurvey import results
for i in range(int(sys.argv[2]) if len(sys.argv) > 2 else 25):
    results.append("shared", [{"method": sys.argv[1], "setting": str(i), "params": i}], profile="smoke")
"""


@pytest.mark.slow
def test_concurrent_writers_keep_every_row(out, tmp_path):
    env = {**os.environ, results.ENV_OUTPUT: str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, name], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                              text=True) for name in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    frame = results.read("shared")
    assert len(frame) == 50
    for name in ("a", "b"):
        assert sorted(frame.loc[frame["method"] == name, "params"]) == list(range(25))
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_a_killed_writer_leaves_a_readable_file_and_no_debris(out, tmp_path):
    results.append("shared", [{"method": "before", "params": 1}], profile="smoke")
    env = {**os.environ, results.ENV_OUTPUT: str(tmp_path)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, "killed", "100000"], cwd=ROOT, env=env)
    path = out / "shared.csv"
    deadline = time.monotonic() + 120
    while len(path.read_bytes().splitlines()) < 6 and time.monotonic() < deadline:  # it is writing
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    frame = results.read("shared")  # parses strictly: no half row made it in
    assert frame["method"].iloc[0] == "before" and len(frame) >= 5
    assert list(frame["setting"].iloc[1:].astype(int)) == list(range(len(frame) - 1))
    results.append("shared", [{"method": "after", "params": 2}], profile="smoke")  # the lock died with it
    assert results.read("shared")["method"].iloc[-1] == "after"
    assert not list(out.glob(".shared.csv.*.tmp")), "a killed writer's temporary file was not cleaned up"


def test_temporary_files_of_interrupted_writes_are_removed(out):
    path = results.append("nb", [{"method": "a"}], profile="cpu")
    stale = out / ".nb.csv.x1y2z3.tmp"
    stale.write_text("method,set")  # what a writer killed mid-write leaves
    results.append("nb", [{"method": "b"}], profile="cpu")
    assert not stale.exists()
    assert results.read("nb")["method"].tolist() == ["a", "b"] and path.exists()


def _valid_file(out) -> bytes:
    results.append("nb", [{"method": "first", "macs": 123456789}, {"method": "second", "macs": 42}], profile="cpu")
    return (out / "nb.csv").read_bytes()


def _cut_outside_quotes(good: bytes) -> bytes:
    return good[: good.rindex(b"123456789") + 4]  # mid-number, as a killed non-atomic writer leaves it


DAMAGE = {
    "cut off mid-row": (_cut_outside_quotes, r"line 2: .*fields"),
    "cut off at a row's end without newline": (lambda good: good[:-1], r"line 3: .*cut off"),
    "cut inside quotes": (lambda good: good + b'third,"unclosed\n', r"line \d+: .*(CSV|quote|fields)"),
    "empty": (lambda good: b"", r"is empty"),
    "binary": (lambda good: b"\x00\x01\x02PK\x03\x04" * 20, r"line 1: binary"),
    "not utf-8": (lambda good: good + b"\xff\xfe,x\n", r"line 4: .*UTF-8"),
    "wrong header": (lambda good: b"name,value\nx,1\n", r"line 1: the header"),
    "a row with an extra field": (lambda good: good + b"a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q,r,s,t,u,v,w,x,y,z\n",
                                  r"line 4: .*fields"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_results_file_is_refused_and_never_rewritten(out, kind):
    damage, message = DAMAGE[kind]
    path = out / "nb.csv"
    bad = damage(_valid_file(out))
    path.write_bytes(bad)
    with pytest.raises(results.ResultsFileError, match=message) as info:
        results.append("nb", [{"method": "third"}], profile="cpu")
    assert str(path) in str(info.value)
    assert path.read_bytes() == bad, "a damaged file must be left exactly as it was"
    with pytest.raises(results.ResultsFileError):
        results.read("nb")


def test_output_pointing_at_a_file_is_a_clear_error_everywhere(tmp_path, monkeypatch, capsys):
    target = tmp_path / "not_a_dir"
    target.write_text("x")
    for where in (target, target / "below"):
        monkeypatch.setenv(results.ENV_OUTPUT, str(where))
        with pytest.raises(results.OutputDirError, match="is a file, not a directory"):
            results.append("nb", [{"method": "a"}], profile="cpu")
        with pytest.raises(results.OutputDirError):
            checkpoints.checkpoint_path(PROFILES["smoke"])
    assert main(["doctor"]) == 1
    assert "outputs: error:" in capsys.readouterr().out
    assert target.read_text() == "x"


# --------------------------------------------------------------------------- checkpoints
TINY = PROFILES["smoke"].replace(dataset="synthetic", train_samples=256, test_samples=64, epochs=1, batch_size=64)


def _checkpoint_bytes(tmp_path) -> bytes:
    model, _ = train.trained_baseline(TINY, log=None)
    return checkpoints.checkpoint_path(TINY).read_bytes()


class Payload:  # an object a weights-only load refuses to unpickle
    pass


BAD_CHECKPOINTS = {
    "empty": (lambda good, path: path.write_bytes(b""), "is empty"),
    "truncated": (lambda good, path: path.write_bytes(good[: len(good) // 2]), "cut off"),
    "corrupt": (lambda good, path: path.write_bytes(b"\x80\x04garbage" * 100), "not a file torch.save wrote"),
    "a web page": (lambda good, path: path.write_bytes(b"<html>404 not found</html>"), "not a file torch.save wrote"),
    "holds objects": (lambda good, path: torch.save({"state_dict": Payload()}, path), "beyond tensors"),
    "another model": (lambda good, path: torch.save({"config": None, "state_dict": {"w": torch.zeros(2)},
                                                      "result": {}}, path), "does not fit|not a vitsurvey"),
}


@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
def test_an_unloadable_checkpoint_is_named_set_aside_and_retrained(out, tmp_path, kind):
    good = _checkpoint_bytes(tmp_path)
    path = checkpoints.checkpoint_path(TINY)
    damage, message = BAD_CHECKPOINTS[kind]
    damage(good, path)
    with pytest.raises(checkpoints.CheckpointError, match=message) as info:
        checkpoints.load_checkpoint(path)
    assert str(path) in str(info.value) and "weights_only=False" not in str(info.value)
    with pytest.warns(checkpoints.CheckpointWarning, match="Moved it to"):
        model, result = train.trained_baseline(TINY, log=None)
    assert path.with_name(path.name + ".damaged").exists()
    reloaded, *_ = checkpoints.load_checkpoint(path)  # retrained and saved again
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))


def test_a_read_only_checkpoint_folder_keeps_the_trained_model(out, tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root ignores permissions: refuse the write the way the OS would
            def refuse(*args, **kwargs):
                raise PermissionError(13, "Permission denied", str(folder))

            monkeypatch.setattr(checkpoints.torch, "save", refuse)
        with pytest.warns(checkpoints.CheckpointWarning, match="could not be saved"):
            model, result = train.trained_baseline(TINY, log=None)
        assert result.top1 >= 0 and isinstance(model, torch.nn.Module)
        assert not list(folder.glob("*.pt")) and not list(folder.glob(".*.tmp")), "nothing half-written is left"
    finally:
        folder.chmod(0o755)


# --------------------------------------------------------------------------- data files
def _fmnist(folder, n_images=8, n_labels=8, top_label=9):
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        img, lab = data._FMNIST_FILES[split]
        data.write_idx(folder / f"{img}.gz", np.zeros((n_images, 28, 28), np.uint8))
        labels = np.arange(n_labels, dtype=np.uint8) % 10
        labels[-1] = top_label
        data.write_idx(folder / f"{lab}.gz", labels)
    return folder


def test_a_truncated_gz_names_the_file_and_says_to_download_again(tmp_path):
    folder = _fmnist(tmp_path / "fashion-mnist")
    gz = folder / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:40])
    with pytest.raises(data.DataFileError, match="train-images-idx3-ubyte.gz is damaged.*download it afresh"):
        data.load("fashion_mnist", "train", root=tmp_path, download=False)


def test_a_gz_that_is_not_gzip_is_named(tmp_path):
    folder = _fmnist(tmp_path / "fashion-mnist")
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"<html>not found</html>")  # a failed download's page
    with pytest.raises(data.DataFileError, match="train-labels-idx1-ubyte.gz is damaged"):
        data.load("fashion_mnist", "train", root=tmp_path, download=False)


def test_image_and_label_counts_must_agree(tmp_path):
    _fmnist(tmp_path / "fashion-mnist", n_images=8, n_labels=7)
    with pytest.raises(data.DataFileError, match="8 images but 7 labels"):
        data.load("fashion_mnist", "train", root=tmp_path, download=False)


def test_labels_outside_the_classes_are_refused_at_load(tmp_path):
    _fmnist(tmp_path / "fashion-mnist", top_label=10)
    with pytest.raises(data.DataFileError, match="label 10 at position 7.*classes 0-9"):
        data.load("fashion_mnist", "test", root=tmp_path, download=False)


def test_a_damaged_cifar_batch_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / f).write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}))
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:30])
    with pytest.raises(data.DataFileError, match="test_batch is damaged"):
        data.load("cifar10", "test", root=tmp_path, download=False)


def test_a_truncated_plain_idx_says_what_to_do(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + (4).to_bytes(4, "big"))  # says 3 sizes, holds 1
    with pytest.raises(data.DataFileError, match="cut off inside its header.*download"):
        data.read_idx(path)


# --------------------------------------------------------------------------- the command line
def test_an_image_size_beyond_the_machine_is_refused_before_allocating(capsys):
    start = time.perf_counter()
    assert main(["profile", "vit_tiny_patch16_224", "--img-size", "100000", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "GiB" in err and "smaller image size" in err and "Traceback" not in err
    assert time.perf_counter() - start < 30


def test_an_unknown_pretrained_tag_is_explained(capsys):
    assert main(["profile", "vit_tiny_patch16_224.in1k_nope", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "no pretrained tag 'in1k_nope'" in err and "augreg_in21k" in err


def test_a_damaged_results_file_fails_the_command_without_a_traceback(out, capsys):
    out.mkdir(parents=True)
    (out / "12_leaderboard.csv").write_bytes(b"method,setting,params\nx,1")
    assert main(["leaderboard"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "12_leaderboard.csv" in err and len(err.strip().splitlines()) <= 2


def test_a_usage_error_and_a_failure_have_different_statuses(out, capsys):
    assert main(["profile", "vit_tiny_patch16_224", "--batch-size", "-1"]) == 2
    assert main(["leaderboard"]) == 1  # nothing measured yet under this output directory
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2
