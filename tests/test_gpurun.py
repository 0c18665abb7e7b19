"""The GPU run and its pack (vitsurvey.gpu): the rehearsal of every step on this CPU, the runner's budgets and
failures, the arithmetic of speed-up against MACs and of FLOP utilisation, the fallback MAC count, and the pack.

The rehearsal is the test the real run depends on: a GPU is lent for minutes, so every step must have run here
first (CUDA-only paths behind their guards, fp8 among them)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vitsurvey import data
from vitsurvey.gpu import pack, plan, run, runner, speed, steps
from vitsurvey.models import VisionTransformer, ViTConfig
from vitsurvey.strategies import tokens

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- the rehearsal


def test_rehearsal_runs_every_step(tmp_path):
    start = time.monotonic()
    rc = run.main(["--rehearse", "--out", str(tmp_path), "--log", str(tmp_path / "run.log")])
    seconds = time.monotonic() - start
    frame = pd.read_csv(tmp_path / "data" / "results" / f"{run.STEM}.csv")
    status = frame[frame["method"] == "gpu-run step"].set_index("step")["status"]
    assert rc == 0, status.to_dict()
    assert list(status.index) == [s.name for s in run.steps_of(plan.REHEARSAL)]
    assert (status == "ok").all()
    assert seconds < plan.REHEARSAL.total_s
    assert set(frame["profile"]) == {"smoke"} and frame["rehearsal"].all()
    rows = frame[frame["method"] != "gpu-run step"]
    by_step = rows.groupby("step")["method"].apply(set)
    assert {"EViT (fused)", "ToMe", "Patch Slimming schedule", "ViT"} <= by_step["tokens"]
    assert "heads + neurons (structured)" in by_step["pruning"]
    assert {"ConcatPlexer", "Image Multiplexer (orthogonal)"} <= by_step["multiplex"]
    tok = rows[rows["step"] == "tokens"].set_index("setting")
    assert tok.loc["dense", "speedup"] == 1.0 and tok.loc["dense", "mac_method"] == "fvcore"
    reduced = tok[tok["method"] != "ViT"]
    assert (reduced["mac_ratio"] < 1).all() and reduced["mac_cut_share"].notna().all()
    # the share is (speed-up - 1) / (MAC speed-up - 1), row by row
    expected = (reduced["speedup"] - 1) / (1 / reduced["mac_ratio"] - 1)
    assert np.allclose(reduced["mac_cut_share"], expected)
    mfu = rows[rows["step"] == "mfu"].set_index("setting")
    assert set(mfu.index) == {"eager", "torch.compile"} and mfu["mfu"].isna().all()  # a CPU has no bf16 peak here
    assert mfu["flops_per_image"].eq(2 * mfu["macs"]).all()
    low = rows[rows["step"] == "low_precision"]
    fp8 = low[low["method"].str.contains("fp8")]
    assert len(fp8) == 2 and fp8["status"].str.startswith("skipped: fp8 needs a CUDA GPU").all()
    accuracy = low[low["setting"] == "accuracy"].dropna(subset=["top1"]).set_index("method")
    assert {"baseline, fp32", "baseline, bf16", "baseline, int8 dynamic"} <= set(accuracy.index)
    assert (low["setting"] == "int8 dynamic, torch.compile").any()
    s3 = rows[rows["step"] == "s3"]
    assert set(s3["method"]) == set(plan.REHEARSAL.s3_only) and s3["throughput_img_s"].gt(0).all()
    log = (tmp_path / "run.log").read_text()
    assert "== s3" in log and "8 of 8 steps ok" in log


def test_the_gpu_run_needs_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="--rehearse"):
        run.run(plan.GPU, out=tmp_path / "out", log_path=tmp_path / "run.log")
    assert not any(tmp_path.iterdir())  # refused before anything was written


# --------------------------------------------------------------------------- the runner


def _context(total: float, log_path: Path) -> tuple[runner.Context, list[dict]]:
    recorded: list[dict] = []
    clock = runner.Clock(total)
    ctx = runner.Context(None, None, torch.device("cpu"), runner.Log(log_path, clock, open(os.devnull, "w")), clock,
                         recorded.extend)
    return ctx, recorded


def test_a_failing_step_costs_its_row_and_the_run_goes_on(tmp_path):
    def half_then_boom(ctx):
        ctx.emit([{"method": "first half"}])
        raise ValueError("boom")

    ctx, recorded = _context(60, tmp_path / "log")
    statuses = runner.run_steps([runner.Step("a", half_then_boom, 0, 10),
                                 runner.Step("b", lambda c: c.emit([{"method": "b's row"}]), 0, 10)], ctx)
    assert [s["status"] for s in statuses] == ["failed: ValueError: boom", "ok"]
    assert [r["method"] for r in recorded] == ["first half", "gpu-run step", "b's row", "gpu-run step"]
    log = (tmp_path / "log").read_text()
    assert "a failed:" in log and "Traceback" in log and "ValueError: boom" in log


def test_a_step_that_would_overrun_the_run_is_skipped_saying_so(tmp_path):
    ctx, recorded = _context(runner.RESERVE_S + 20, tmp_path / "log")
    ran = []
    statuses = runner.run_steps([runner.Step("big", lambda c: ran.append("big"), 30, 60),
                                 runner.Step("small", lambda c: ran.append("small"), 1, 10)], ctx)
    assert ran == ["small"]
    assert statuses[0]["status"].startswith("skipped: 20 s of the run's 25 s were left and it needs about 30 s")


@pytest.mark.skipif(not hasattr(__import__("signal"), "setitimer"), reason="needs POSIX interval timers")
def test_a_step_past_its_cap_is_stopped_even_inside_its_own_try(tmp_path):
    after = []

    def stubborn(ctx):
        try:
            time.sleep(5)
        except Exception:  # a step's own guard must not swallow the cap
            after.append("swallowed")
        after.append("went on")

    ctx, _ = _context(60, tmp_path / "log")
    start = time.monotonic()
    statuses = runner.run_steps([runner.Step("slow", stubborn, 0, 0.3)], ctx)
    assert time.monotonic() - start < 3
    assert statuses[0]["status"].startswith("failed: slow: stopped at its time cap of 0 s")
    assert after == []


def test_every_step_fits_its_plan_when_it_takes_its_expected_time():
    for p in (plan.GPU, plan.REHEARSAL):
        listed = run.steps_of(p)
        assert sum(s.expected_s for s in listed) <= p.total_s - runner.RESERVE_S
        assert all(s.cap_s >= s.expected_s for s in listed)


# --------------------------------------------------------------------------- the arithmetic


def test_share_of_the_mac_cut():
    assert speed.mac_cut_share(1.5, 0.5) == pytest.approx(0.5)  # half the MACs, 1.5x: half the ideal 2x
    assert speed.mac_cut_share(2.0, 0.5) == pytest.approx(1.0)
    assert speed.mac_cut_share(1.0, 0.8) == pytest.approx(0.0)
    assert speed.mac_cut_share(1.2, 1.0) is None
    with pytest.raises(ValueError, match="mac_ratio"):
        speed.mac_cut_share(1.0, 0.0)
    assert speed.goal_verdict(0.96, 0.99) == "meets the goal"
    assert speed.goal_verdict(0.5, 0.9) == "misses the goal"
    assert speed.goal_verdict(0.9, 1.0) == "inconclusive at this precision"


def test_model_flop_utilisation_and_peaks():
    assert speed.mfu(1000, 2e9, 4.0) == pytest.approx(0.5)  # 1000 img/s x 2 GFLOP = 2 TFLOP/s of 4
    # 50% of an H100/H200's 989.4 TFLOP/s on ViT-B/16 (17.58 GMACs = 35.17 GFLOPs per image): about 14,070 img/s
    assert 0.5 * 989.4e12 / (2 * 17.5827e9) == pytest.approx(14_069, rel=1e-3)
    assert speed.peak_bf16_tflops("NVIDIA H200") == 989.4
    assert speed.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert speed.peak_bf16_tflops("NVIDIA H100 PCIe") == 756.5
    assert speed.peak_bf16_tflops("NVIDIA H200 NVL") == 835.5
    assert speed.peak_bf16_tflops("AMD EPYC (2 threads; AVX2)") is None
    with pytest.raises(ValueError):
        speed.mfu(1.0, 1.0, 0.0)


TINY = ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=2, embed_dim=4, depth=1, num_heads=1)
# by hand: N = 4 patches + 1 = 5 tokens, D = 4, MLP 16: patch embedding 4 x 16 x 4 = 256; QKV 5 x 4 x 12 = 240;
# scores and values 25 x 4 = 100 each; projection 5 x 4 x 4 = 80; MLP 2 x 5 x 4 x 16 = 640; LayerNorms 5 per element,
# two in the block and the final one: 3 x 5 x 5 x 4 = 300; head 4 x 2 = 8
TINY_MACS = 256 + 240 + 100 + 100 + 80 + 640 + 300 + 8


def test_macs_with_fvcore_and_without_it(monkeypatch):
    vit = VisionTransformer(TINY).eval()
    x = torch.zeros(1, 1, 8, 8)
    assert speed.macs_of(speed.CastInput(vit, torch.float32), x) == (TINY_MACS, "fvcore")
    tome = tokens.ToMe(VisionTransformer(ViTConfig(img_size=32, patch_size=4, embed_dim=8, depth=2, num_heads=2)), 8)
    evit = tokens.EViT(tome.vit, 0.5, [0])
    step = tokens.WithTokenStep(tome.vit, tokens.schedule_step([65, 20]))
    z = torch.zeros(1, 3, 32, 32)
    counted = {m: speed.macs_of(m, z)[0] for m in (tome, evit, step)}
    monkeypatch.setitem(sys.modules, "fvcore", None)  # as on a machine without fvcore
    monkeypatch.setitem(sys.modules, "fvcore.nn", None)
    total, how = speed.macs_of(speed.CastInput(vit, torch.float32), x)
    assert total == TINY_MACS and how == "formula (vit_macs; fvcore is not installed)"
    for model, fv in counted.items():
        assert speed.macs_of(model, z)[0] == fv  # the formulas agree with fvcore on every token schedule
    assert speed.macs_of(torch.nn.Linear(4, 4), torch.zeros(1, 4)) == (
        None, "not counted: fvcore is not installed and Linear has no formula here")


def test_slimming_schedule_carried_to_another_depth():
    found = tokens.SlimmingResult([torch.arange(17), torch.arange(9)], [])  # 16 patches, then 8 of them kept
    # fractions kept: 1.0, 0.5; blocks 0-1 of 4 map to the first, 2-3 to the second: 1 + 196, 1 + 98
    assert steps.slimming_counts(found, 17, 4, 196) == [197, 197, 99, 99]


def test_timed_models_keep_every_tensor_on_the_models_device():
    """Each model the speed steps time, run on torch's meta device: a tensor made on the CPU inside a forward pass
    (which a GPU run would meet as a device mismatch) fails here."""
    meta = torch.device("meta")
    cfg = plan.REHEARSAL.vits["ViT-S/16"]
    vit = speed.build_vit(cfg, meta)
    slimmed = {"tolerance 0.3": tokens.SlimmingResult([torch.arange(17), torch.arange(5)], [])}
    models = {k: m for k, (_, _, m) in steps.token_variants(vit, slimmed, 17).items()}
    models |= {f"fixed {k}": m for k, (_, _, m) in steps.token_variants(vit).items() if k == "fixed schedule"}
    models |= {f"pruning {k}": m for k, (_, _, m) in steps.pruned_variants(cfg, (0.5,), meta)[0].items()}
    x = torch.zeros(2, cfg.in_chans, cfg.img_size, cfg.img_size, device=meta)
    from vitsurvey import profiles

    P = profiles.get_profile("smoke")
    base = steps.multiplexers(ViTConfig(img_size=28, in_chans=1, num_classes=10, patch_size=4, embed_dim=32, depth=2,
                                        num_heads=4), P, meta)
    assert len(models) == 11 and len(base) == 6
    with torch.inference_mode():
        for name, model in models.items():
            assert speed.CastInput(model)(x).device == meta, name
        for name, model in base.items():
            assert speed.CastInput(model)(torch.zeros(8, 1, 28, 28, device=meta)).shape == (8, 10), name


# --------------------------------------------------------------------------- the pack


def _fake_fmnist(root: Path) -> None:
    """A tiny stand-in for Fashion-MNIST in torchvision's layout: the images file of the test split uncompressed."""
    folder = root / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 20)):
        data.write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        data.write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
    raw = folder / "t10k-images-idx3-ubyte"
    import gzip

    raw.write_bytes(gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes()))
    (folder / "t10k-images-idx3-ubyte.gz").unlink()


def _stub_wheels(dest: Path, requirements: list[str], find_links=None, log=print) -> list[Path]:
    """Stands in for the registry: one small file per requirement."""
    dest.mkdir(parents=True, exist_ok=True)
    made = [dest / f"{r.split('==')[0]}-0-py3-none-any.whl" for r in requirements]
    for path in made:
        path.write_bytes(b"w")
    return made


def _stub_own_wheel(dest: Path, log=print) -> Path:
    path = dest / "vitsurvey-0-py3-none-any.whl"
    path.write_bytes(b"v")
    return path


def test_pack_gathers_data_script_and_manifest_within_the_limit(tmp_path, monkeypatch):
    _fake_fmnist(tmp_path / "fm")
    monkeypatch.setenv(data.ENV_ROOT, str(tmp_path / "fm"))
    dest = tmp_path / "pack"
    own = _stub_own_wheel
    total = pack.build(dest, fetch=_stub_wheels, own_wheel=own, log=lambda m: None)
    names = sorted(p.name for p in (dest / "wheels").iterdir())
    assert names == sorted([f"{n}-0-py3-none-any.whl" for n in pack.PACKAGES] + ["vitsurvey-0-py3-none-any.whl"])
    for split, n in (("train", 40), ("test", 20)):  # all four files gzipped, readable where install.sh points
        assert len(data.load("fashion_mnist", split, root=dest / "data", download=False)) == n
    assert sorted(p.name for p in (dest / "data" / "fashion-mnist").iterdir()) == sorted(
        f"{s}.gz" for s in pack.FMNIST_FILES)
    assert (dest / "reported" / "s3_runs.csv").read_bytes() == (ROOT / "data" / "reported" / "s3_runs.csv").read_bytes()
    script = (dest / "install.sh").read_text()
    assert os.stat(dest / "install.sh").st_mode & stat.S_IXUSR
    assert "--no-index" in script and "vitsurvey.gpu.run" in script and '--reported "$HERE/reported"' in script
    listed = (dest / "MANIFEST.txt").read_text().splitlines()
    files = [p for p in dest.rglob("*") if p.is_file() and p.name != "MANIFEST.txt"]
    assert len(listed) == len(files) + 1 and listed[-1].split()[0] == f"{total:,}"
    assert total == sum(p.stat().st_size for p in files)
    pack.build(dest, fetch=_stub_wheels, own_wheel=own, log=lambda m: None)  # an earlier pack is replaced
    monkeypatch.setattr(pack, "LIMIT_BYTES", total - 1)
    with pytest.raises(pack.PackError, match="over the limit"):
        pack.build(dest, fetch=_stub_wheels, own_wheel=own, log=lambda m: None)
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(pack.PackError, match="holds other files"):
        pack.build(dest, fetch=_stub_wheels, own_wheel=own, log=lambda m: None)


def test_pack_without_the_data_set_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "search_roots", lambda root=None: [tmp_path / "empty"])
    with pytest.raises(pack.PackError, match="dataset-fashion-mnist"):
        pack.gather_data(tmp_path / "pack" / "data", log=lambda m: None)


def _registry_reachable(tmp: Path) -> bool:
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(tmp),
                               "yacs==0.1.8"], capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


@pytest.mark.slow
def test_pack_installs_offline_and_rehearses_from_it(tmp_path):
    if data.find_all()["fashion_mnist"] == "not found":
        pytest.skip("gpu-pack needs full Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    if not _registry_reachable(tmp_path / "probe"):
        pytest.skip("the package registry is unreachable from here: the pack's wheels cannot be downloaded")
    dest = tmp_path / "pack"
    total = pack.build(dest, log=lambda m: None)
    assert total <= pack.LIMIT_BYTES
    wheels = {p.name.split("-")[0] for p in (dest / "wheels").glob("*.whl")}
    assert wheels == {n.replace("-", "_") for n in pack.PACKAGES} | {"vitsurvey"}
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    env.pop("VITSURVEY_OUTPUT", None)
    done = subprocess.run(["bash", str(dest / "install.sh"), "--rehearse"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    site = dest / "site"
    where = subprocess.run([sys.executable, "-c", "import vitsurvey, fvcore, torchao; print(vitsurvey.__file__)"],
                           cwd=tmp_path, env={**env, "PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(site))
    frame = pd.read_csv(tmp_path / "out" / "data" / "results" / f"{run.STEM}.csv")
    assert (frame.loc[frame["method"] == "gpu-run step", "status"] == "ok").all()
