"""Training on several processes (DDP on gloo, as CI can run it) takes the same steps as one process, and a
training stopped after an epoch resumes to the same end."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from vitsurvey import data, distributed, train
from vitsurvey.__main__ import main
from vitsurvey.models import VisionTransformer
from vitsurvey.profiles import PROFILES

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["train", "--profile", "smoke", "--dataset", "synthetic", "--epochs", "2", "--batch-size", "32",
        "--train-samples", "256", "--test-samples", "64", "--no-augment"]
TINY = PROFILES["smoke"].replace(dataset="synthetic", train_samples=256, test_samples=64, epochs=2, batch_size=32,
                                 augment=False)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
def test_two_gloo_processes_take_the_steps_of_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSURVEY_OUTPUT", str(tmp_path))
    assert main([*ARGS, "--checkpoint", str(tmp_path / "one.pt")]) == 0
    env = {**os.environ, "VITSURVEY_OUTPUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]  # a free port
    run = subprocess.run([*torchrun, "-m", "vitsurvey", *ARGS, "--checkpoint", str(tmp_path / "two.pt")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    one, two = _weights(tmp_path / "one.pt"), _weights(tmp_path / "two.pt")
    assert one.keys() == two.keys()
    for k in one:  # the same global batches, gradients averaged by DDP: equal up to summation order
        torch.testing.assert_close(two[k], one[k], atol=1e-4, rtol=1e-4, msg=k)
    assert not torch.equal(one["head.weight"], VisionTransformer(train.baseline_config(TINY)).head.weight)
    rows = pd.read_csv(tmp_path / "data" / "results" / "train.csv")
    assert rows["world_size"].tolist() == [1, 2]  # one row per training, the same columns for both
    assert rows[["method", "params", "macs", "top1", "batch_size", "epochs"]].nunique().max() == 1


def test_a_stopped_training_resumes_to_the_same_end(tmp_path):
    def run(resume, stop_after=None):
        train.seed_everything(0)
        model = VisionTransformer(train.baseline_config(TINY))
        tr, te = data.loaders(TINY)

        def log(line):
            if stop_after and line.startswith(f"epoch {stop_after}/"):
                raise KeyboardInterrupt

        result = train.fit(model, tr, te, TINY, log=log, prepare=distributed.prepare(distributed.Context(), 0),
                           resume=resume)
        return model, result

    straight, result = run(tmp_path / "straight.pt")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "stopped.pt", stop_after=1)
    assert torch.load(tmp_path / "stopped.pt", weights_only=True)["epoch"] == 1
    resumed, resumed_result = run(tmp_path / "stopped.pt")
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert resumed_result.history == result.history


def test_a_training_state_from_other_settings_is_refused(tmp_path):
    model = VisionTransformer(train.baseline_config(TINY))
    tr, te = data.loaders(TINY.replace(epochs=1))
    train.fit(model, tr, te, TINY.replace(epochs=1), log=None, resume=tmp_path / "state.pt")
    with pytest.raises(train.CheckpointError, match="other settings"):
        train.fit(model, tr, te, TINY.replace(epochs=1, lr=1e-5), log=None, resume=tmp_path / "state.pt")


def test_the_global_batch_must_split_evenly():
    tr, _ = data.loaders(TINY)
    with pytest.raises(ValueError, match="multiple of 3"):
        distributed.sharded(tr, distributed.Context(rank=0, world=3), seed=0)


def test_shares_of_one_step_make_up_the_global_batch():
    tr, _ = data.loaders(TINY)
    one = distributed.sharded(tr, distributed.Context(), seed=5)
    shares = [distributed.sharded(tr, distributed.Context(rank=r, world=2), seed=5) for r in (0, 1)]
    for loader in (one, *shares):
        loader.sampler.set_epoch(3)
    (x1, _), (xa, _), (xb, _) = (next(iter(loader)) for loader in (one, *shares))
    assert xa.shape[0] == xb.shape[0] == x1.shape[0] // 2
    key = lambda x: sorted(x.flatten(1).sum(1).tolist())  # noqa: E731
    assert key(torch.cat([xa, xb])) == pytest.approx(key(x1))


@pytest.mark.parametrize("args, message", [
    (["--model", "mixer:nope"], "unknown token mixer"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--batch-size", "-4"], "--batch-size must be positive"),
])
def test_train_bad_input(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setenv("VITSURVEY_OUTPUT", str(tmp_path))
    assert main([*ARGS, *args]) == 2
    assert message in capsys.readouterr().err


def test_fine_tuning_starts_from_pretrained_weights_but_a_fresh_head(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VITSURVEY_OUTPUT", str(tmp_path))
    assert main([*ARGS, "--epochs", "1", "--checkpoint", str(tmp_path / "pre.pt")]) == 0
    pre = _weights(tmp_path / "pre.pt")
    pre["head.weight"] = torch.zeros(3, pre["head.weight"].shape[1])  # as if pre-trained on 3 classes
    pre["head.bias"] = torch.zeros(3)
    torch.save({"model": pre}, tmp_path / "pre3.pt")
    assert main([*ARGS, "--epochs", "1", "--init", str(tmp_path / "pre3.pt"), "--lr", "1e-9",
                 "--checkpoint", str(tmp_path / "fine.pt")]) == 0
    assert "tensors from" in capsys.readouterr().out
    fine = _weights(tmp_path / "fine.pt")
    torch.testing.assert_close(fine["patch_embed.proj.weight"], pre["patch_embed.proj.weight"], atol=1e-6, rtol=0)
    assert fine["head.weight"].shape[0] == 10
