import dataclasses
import json

import pytest
import torch
from torch import nn

from vitsurvey import measure, models, profiles, results
from vitsurvey.measure import reruns, timing
from vitsurvey.models import PRESETS, ViTConfig, VisionTransformer
from vitsurvey.profiles import PROFILES


def test_vit_tiny_macs_count_fused_attention():
    model = models.create("vit_tiny_patch16_224")
    count = measure.count_macs(model, torch.zeros(1, 3, 224, 224))
    assert count.total == 1_258_411_200
    assert count.by_operator["scaled_dot_product_attention"] == 178_831_872


def test_fused_and_explicit_attention_count_the_same():
    fused = models.create("vit_tiny_patch16_224")
    explicit = models.create("vit_tiny_patch16_224")
    for block in explicit.blocks:
        block.attn.fused_attn = False
    x = torch.zeros(1, 3, 224, 224)
    assert measure.count_macs(fused, x).total == measure.count_macs(explicit, x).total


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("img", [224, 384])
def test_analytic_formula_agrees_with_fvcore(name, img):
    cfg = ViTConfig(**{**PRESETS[name].__dict__, "img_size": img})
    counted = measure.count_macs(models.timm_vit(cfg), torch.zeros(1, 3, img, img)).total
    analytic = measure.vit_macs(cfg)["total"]
    assert abs(analytic - counted) / counted < 0.005


def test_analytic_attention_is_quadratic_in_tokens():
    cfg = PRESETS["vit_tiny_patch16_224"]
    a, b = measure.vit_macs(cfg, tokens=100), measure.vit_macs(cfg, tokens=200)
    assert b["attn_scores"] == 4 * a["attn_scores"]
    assert b["qkv"] == 2 * a["qkv"]


def test_model_size():
    m = nn.Linear(10, 10)  # 110 parameters
    assert measure.model_size_bytes(m, 32) == 440
    assert measure.model_size_bytes(m, 8) == 110
    assert measure.model_size_bytes(m, 4) == 55
    with pytest.raises(ValueError, match="positive"):
        measure.model_size_bytes(m, 0)


def test_params_trainable_only():
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    m[0].weight.requires_grad_(False)
    assert measure.count_params(m) == 4 + 10
    assert measure.count_params(m, trainable_only=False) == 30


class _OomAbove(nn.Module):
    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.lin = limit, nn.Linear(4, 2)

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.lin(x.flatten(1)[:, :4])


def test_throughput_sweep_stops_at_out_of_memory():
    result = measure.throughput(_OomAbove(4), (1, 2, 2), batch_sizes=(1, 2, 4, 8, 16), warmup=1, iters=2)
    assert list(result.per_batch) == [1, 2, 4]
    assert result.max_batch_fitted == 4 and result.oom_at == 8
    assert result.batch_size in (1, 2, 4) and result.img_per_s == max(result.per_batch.values())


def test_throughput_other_errors_propagate():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        measure.throughput(Broken(), (1, 2, 2), batch_sizes=(1,))


def test_latency_is_positive():
    assert measure.latency_ms(nn.Flatten(), (1, 4, 4), iters=3) > 0


def test_cpu_tracker_counts_live_tensor_bytes_exactly():
    def fn():
        a = torch.ones(1000)  # 4000 bytes
        b = a * 2  # 4000 more: peak 8000
        del a, b
        c = torch.ones(500)  # 2000
        d = c.view(10, 50)  # a view: no new storage
        return d

    resident = [torch.zeros(250)]  # 1000 bytes held throughout
    peak, method = measure.peak_memory(fn, "cpu", resident)
    assert method == "cpu tensor tracking"
    assert peak == 1000 + 8000


def test_inference_and_training_memory():
    model = models.VisionTransformer(ViTConfig(img_size=28, patch_size=4, in_chans=1, num_classes=10,
                                               embed_dim=32, depth=2, num_heads=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    infer = measure.inference_memory(model, (1, 28, 28), batch_size=8)
    train = measure.training_memory(model, (1, 28, 28), batch_size=8)
    weights = 4 * measure.count_params(model)
    assert infer.weights_bytes == weights
    assert weights < infer.peak_bytes < train.peak_bytes
    # gradients and two AdamW moments exist at the peak of a training step
    assert train.peak_bytes >= 4 * weights
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "model was changed"
    assert all(p.grad is None for p in model.parameters())


def test_int8_model_counts_its_packed_weights():
    """torch.ao keeps int8 Linear weights packed outside parameters(): they must still be counted."""
    from vitsurvey.strategies import quant

    model = models.VisionTransformer(ViTConfig(img_size=28, patch_size=4, in_chans=1, num_classes=10,
                                               embed_dim=32, depth=2, num_heads=2)).eval()
    int8 = quant.dynamic_int8(model)
    linear = sum(m.weight.numel() + m.bias.numel() for m in model.modules() if isinstance(m, nn.Linear))
    packed = measure.packed_weights(int8)
    assert sum(t.numel() for t in packed) == linear
    assert measure.count_params(int8) == measure.count_params(model)
    f32 = measure.inference_memory(model, (1, 28, 28)).weights_bytes
    q8 = measure.inference_memory(int8, (1, 28, 28)).weights_bytes
    int8_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert q8 == f32 - 3 * int8_weights  # each quantized weight: 1 byte instead of 4; biases stay float


def test_inference_memory_grows_with_batch():
    model = models.create("vit_tiny_patch16_224", img_size=64, num_classes=10)
    small = measure.inference_memory(model, (3, 64, 64), batch_size=1).peak_bytes
    large = measure.inference_memory(model, (3, 64, 64), batch_size=16).peak_bytes
    assert large > small


def test_benchmark_record():
    model = models.create("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=10)
    record = measure.benchmark(model, (3, 32, 32), PROFILES["smoke"], name="vit_tiny@32")
    cfg = ViTConfig.of(model)
    assert record.params == measure.count_params(model)
    assert record.macs == record.analytic_macs == measure.vit_macs(cfg)["total"]
    assert record.throughput_img_s > 0 and record.batch_size in PROFILES["smoke"].bench_batch_sizes
    assert record.train_mem_bytes > record.infer_mem_bytes > 0


def test_throughput_runs_for_at_least_min_seconds():
    import time

    start = time.perf_counter()
    result = measure.throughput(nn.Flatten(), (1, 2, 2), batch_sizes=(2,), warmup=0, iters=1, min_seconds=0.2)
    assert time.perf_counter() - start >= 0.2
    # many more than one pass were timed, so the rate reflects them all
    assert result.per_batch[2] > 2 / 0.2


def test_benchmark_models_skips_unknown_and_records_out_of_memory(monkeypatch):
    real_create = models.create

    def fake_create(name, **kw):
        if name == "oom_above_1":
            return _OomAbove(1)
        return real_create(name, **kw)

    monkeypatch.setattr(models, "create", fake_create)
    rows = measure.benchmark_models(
        ["vit_tiny_patch16_2244", "oom_above_1", "deit_tiny_patch16_224"], PROFILES["smoke"],
        batch_sizes=(1, 2), log=None,
    )
    by_name = {r["model"]: r for r in rows}
    assert by_name["vit_tiny_patch16_2244"]["status"] == "unknown model"
    oom = by_name["oom_above_1"]
    assert oom["status"] == "out of memory at batch 2"
    assert oom["max_batch_fitted"] == 1 and oom["throughput_img_s"] > 0
    assert oom["infer_mem_bytes"] is None  # memory is measured at batch 2, which does not fit
    ok = by_name["deit_tiny_patch16_224"]
    assert ok["status"] == "ok" and ok["macs"] == 1_258_411_200 and ok["throughput_bf16_img_s"] is None
    # both models that ran were timed again in interleaved rounds, against the first of them
    smoke_rounds = PROFILES["smoke"].timing_rounds
    assert oom["timing_rounds"] == ok["timing_rounds"] == smoke_rounds
    assert ok["reference"] == "oom_above_1" and oom["relative_throughput"] == 1.0
    assert ok["throughput_low"] <= ok["throughput_q1"] <= ok["throughput_img_s"] <= ok["throughput_q3"] <= ok["throughput_high"]
    assert ok["relative_low"] <= ok["relative_throughput"] <= ok["relative_high"]
    assert by_name["vit_tiny_patch16_2244"]["throughput_img_s"] is None


def test_plain_fvcore_misses_fused_attention():
    model = models.create("vit_tiny_patch16_224")
    x = torch.zeros(1, 3, 224, 224)
    plain = measure.count_macs(model, x, count_fused_attention=False).total
    assert measure.count_macs(model, x).total - plain == 178_831_872  # exactly the attention matmuls


def test_pass_times_are_per_pass():
    times = measure.pass_times_ms(nn.Flatten(), (1, 2, 2), batch_size=2, passes=4)
    assert len(times) == 4 and all(t > 0 for t in times)


def test_vit_macs_per_block_token_counts():
    cfg = PRESETS["vit_tiny_patch16_224"]
    uniform = measure.vit_macs(cfg)
    assert measure.vit_macs(cfg, tokens=[197] * 12) == uniform
    assert measure.vit_macs(models.VisionTransformer(cfg)) == uniform
    fewer = measure.vit_macs(cfg, tokens=[197] * 6 + [99] * 6)
    assert fewer["patch_embed"] == uniform["patch_embed"] and fewer["total"] < uniform["total"]
    with pytest.raises(ValueError, match="one count per block"):
        measure.vit_macs(cfg, tokens=[197] * 11)


def test_vit_macs_follow_dropped_tokens_like_fvcore():
    model = models.VisionTransformer(ViTConfig(img_size=32, patch_size=4, num_classes=10, embed_dim=48, depth=4,
                                               num_heads=3))

    def keep_33(i, tokens, attn):
        return tokens[:, :33]

    counts = model.token_counts(torch.zeros(1, 3, 32, 32), keep_33)
    assert counts == [65, 33, 33, 33]

    class Reduced(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = model

        def forward(self, x):
            return self.vit(x, token_step=keep_33)

    counted = measure.count_macs(Reduced(), torch.zeros(1, 3, 32, 32))
    # fvcore sees explicit attention matmuls here; the formula must agree exactly
    assert counted.total == measure.vit_macs(model, tokens=counts)["total"]


def test_relative_throughput_times_every_model_each_round(monkeypatch):
    calls = []
    real = measure.throughput

    def spy(model, *args, **kwargs):
        calls.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(timing, "throughput", spy)
    fast, slow = nn.Flatten(), nn.Sequential(*[nn.Linear(64, 64) for _ in range(8)], nn.Flatten())
    timings = measure.relative_throughput({"fast": fast, "slow": slow}, (1, 1, 64), 4, rounds=2, warmup=0, iters=3)
    assert calls == [fast, slow, slow, fast]  # interleaved, each round starting one model later
    assert timings.rounds == 2 and timings.reference == "fast"
    assert timings.rate("fast").median > timings.rate("slow").median > 0
    assert timings.ratio("slow").median < 1 and timings.ratio("fast").median == 1


def _scripted(monkeypatch, rates_per_call):
    """Make throughput() return the next scripted rate for each model, in call order."""
    script = {name: iter(rates) for name, rates in rates_per_call.items()}

    def fake(model, input_shape, batch_sizes, device, **kwargs):
        return measure.Throughput(next(script[model.name]), batch_sizes[0])

    monkeypatch.setattr(timing, "throughput", fake)


class _Named(nn.Module):
    def __init__(self, name):
        super().__init__()
        self.name = name


def test_ratios_are_taken_within_rounds_so_drift_cancels(monkeypatch):
    # the machine halves its speed every round; the model is always exactly twice as fast as the reference
    drift = [100 / 2**k for k in range(6)]
    _scripted(monkeypatch, {"ref": drift, "new": [2 * r for r in drift]})
    t = measure.relative_throughput({"ref": _Named("ref"), "new": _Named("new")}, (1, 1, 1), 1, rounds=6)
    assert t.ratio("new").median == t.ratio("new").q1 == t.ratio("new").q3 == 2.0
    assert t.rate("new").relative_iqr > 0.5  # the absolute rates are all over the place
    assert t.table().loc["new", "verdict"] == "faster"


def test_rounds_continue_until_the_spread_is_tight(monkeypatch):
    noisy = [1.0, 1.5, 0.7, 1.3, 0.8] + [1.0] * 20
    _scripted(monkeypatch, {"ref": [1.0] * 25, "new": noisy})
    models = {"ref": _Named("ref"), "new": _Named("new")}
    t = measure.relative_throughput(models, (1, 1, 1), 1, rounds=5, max_rounds=25, tolerance=0.05)
    assert 5 < t.rounds < 25 and t.ratio("new").relative_iqr <= 0.05
    _scripted(monkeypatch, {"ref": [1.0] * 25, "new": noisy})
    assert measure.relative_throughput(models, (1, 1, 1), 1, rounds=5).rounds == 5  # no max_rounds: exactly 5


def test_a_ratio_whose_spread_includes_one_is_within_noise(monkeypatch):
    _scripted(monkeypatch, {"ref": [1.0] * 5, "new": [0.9, 1.2, 1.05, 0.95, 1.1]})
    t = measure.relative_throughput({"ref": _Named("ref"), "new": _Named("new")}, (1, 1, 1), 1, rounds=5)
    assert t.ratio("new").verdict() == "within noise"
    with pytest.raises(KeyError, match="timed: ref, new"):
        t.ratio("other")
    with pytest.raises(KeyError, match="reference 'x'"):
        measure.relative_throughput({"ref": _Named("ref")}, (1, 1, 1), 1, reference="x")


def test_serialized_bytes_grow_with_parameters():
    small, large = nn.Linear(10, 10), nn.Linear(100, 100)
    assert 440 < measure.serialized_bytes(small) < measure.serialized_bytes(large)
    assert measure.serialized_bytes(large) >= 4 * 10_100


def test_autocast_module_runs_the_model_in_bf16():
    lin = nn.Linear(4, 4)
    out = measure.Autocast(lin)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    assert measure.Autocast(lin, torch.float32)(torch.randn(2, 4)).dtype == torch.float32


def test_activation_bytes_grow_linearly_with_the_batch():
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)).eval()
    one, two, five = (measure.activation_bytes(model, (3, 32, 32), b) for b in (1, 2, 5))
    per_image = two - one
    assert five - one == pytest.approx(4 * per_image, rel=0.05)  # linear in the batch beyond a constant
    # far more than the logits alone: the forward pass saves its intermediate tensors for backward
    assert per_image > 50 * 10 * 4
    assert not model.training



def test_steady_allocator_is_set_once_on_glibc():
    import platform

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert measure.steady_allocator() is expected
    assert measure.steady_allocator() is expected  # idempotent: a second call changes nothing


def _calibration_rows(device, stamp, rate, ratio):
    return [{"method": "run-to-run", "setting": f"{k} floor", "kind": f"{k} floor", "runs": 6, "floor": f,
             "calibrated_at": stamp, "device": device} for k, f in (("rate", rate), ("ratio", ratio))]


def test_rerun_floor_reads_the_latest_calibration_of_this_device(out, monkeypatch):
    assert measure.rerun_floor("cpu") is None  # never calibrated: one run's range
    me = results.device_name("cpu")
    results.append(measure.RERUN_FLOOR_STEM, _calibration_rows(me, "2026-01-01T10:00:00", 0.2, 0.3), "cpu", "cpu")
    results.append(measure.RERUN_FLOOR_STEM, _calibration_rows(me, "2026-01-02T10:00:00", 0.04, 0.05), "cpu", "cpu")
    results.append(measure.RERUN_FLOOR_STEM, _calibration_rows("another CPU", "2026-02-01T10:00:00", 0.5, 0.5), "cpu", "cpu")
    floor = measure.rerun_floor("cpu")
    assert (floor.rate, floor.ratio, floor.runs, floor.device) == (0.04, 0.05, 6, me)
    # every timing on this device now folds the floor into its ranges; floor=False leaves it out
    _scripted(monkeypatch, {"ref": [1.0] * 5, "new": [1.03, 1.031, 1.032, 1.033, 1.034]})
    t = measure.relative_throughput({"ref": _Named("ref"), "new": _Named("new")}, (1, 1, 1), 1, rounds=5)
    assert t.floor == floor and t.ratio("new").between == 0.05 and t.rate("ref").between == 0.04
    assert t.ratio("new").verdict() == "within noise" and t.table().loc["new", "verdict"] == "within noise"
    _scripted(monkeypatch, {"ref": [1.0] * 5, "new": [1.03, 1.031, 1.032, 1.033, 1.034]})
    t = measure.relative_throughput({"ref": _Named("ref"), "new": _Named("new")}, (1, 1, 1), 1, rounds=5, floor=False)
    assert t.floor is None and t.ratio("new").verdict() == "faster"


def by_setting(rows):
    return {r["setting"]: r for r in rows}


def test_each_calibration_run_has_its_companion_in_turn():
    prof = profiles.get_profile("cpu", resolve_data=False)
    assert [measure.companion_of_run(prof, k) for k in range(6)] == [
        None, "resnet50", "vit_base_patch16_224", None, "resnet50", "vit_base_patch16_224"]
    alone = dataclasses.replace(prof, calibration_companions=())
    assert [measure.companion_of_run(alone, k) for k in range(3)] == [None, None, None]


def test_a_rerun_floor_run_reports_every_pair_but_not_its_companion(monkeypatch):
    prof = profiles.get_profile("smoke", resolve_data=False)
    timed = []
    real = measure.relative_throughput

    def spy(models, *args, **kwargs):
        timed.append(list(models))
        return real(models, *args, **kwargs)

    monkeypatch.setattr(reruns, "relative_throughput", spy)
    out = measure.rerun_floor_run(prof, "cpu", "mobilenetv3_small_100")
    assert timed == [["vit_tiny_patch16_224", "resnet18", "vit_tiny_patch16_224, int8",
                      "companion: mobilenetv3_small_100"]]
    assert sorted(out) == sorted([
        "rate: vit_tiny_patch16_224", "rate: resnet18", "rate: vit_tiny_patch16_224, int8",
        "ratio: resnet18 / vit_tiny_patch16_224", "ratio: vit_tiny_patch16_224, int8 / vit_tiny_patch16_224",
        "ratio: vit_tiny_patch16_224, int8 / resnet18"])
    assert all(v > 0 for v in out.values())


def test_measure_rerun_floor_spreads_the_medians_of_separate_runs(monkeypatch):
    import subprocess

    medians = iter([{"rate: a": 10.0, "ratio: b": 2.0}, {"rate: a": 12.0, "ratio: b": 2.1},
                    {"rate: a": 11.0, "ratio: b": 1.9}])
    launched = []

    def fake_run(cmd, **kwargs):
        launched.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "noise\nCALIBRATION " + json.dumps(next(medians)) + "\n", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    rows = measure.measure_rerun_floor(profiles.get_profile("smoke", resolve_data=False), runs=3, pause_s=0, log=None)
    assert len(launched) == 3 and all("smoke" in cmd for cmd in launched)
    # run 1 times the calibration models alone, run 2 beside the profile's companion, run 3 alone again
    assert [cmd[-1] for cmd in launched] == ["", "mobilenetv3_small_100", ""]
    assert by_setting(rows)["rate: a"]["companions"] == "mobilenetv3_small_100"
    by = {r["setting"]: r for r in rows}
    assert by["rate: a"]["median"] == 11.0 and by["rate: a"]["floor"] == pytest.approx(2 / 11)
    assert by["ratio floor"]["floor"] == pytest.approx(0.2 / 2.0) and by["rate floor"]["floor"] == pytest.approx(2 / 11)

    def failing(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "Traceback ...\nRuntimeError: boom")

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(RuntimeError, match=r"Calibration run 1 of 2 failed \(exit 1\): RuntimeError: boom$"):
        measure.measure_rerun_floor(profiles.get_profile("smoke", resolve_data=False), runs=2, pause_s=0, log=None)
    with pytest.raises(ValueError, match="at least 2 runs"):
        measure.measure_rerun_floor(profiles.get_profile("smoke", resolve_data=False), runs=1)
    with pytest.raises(ValueError, match="pause_s cannot be negative"):
        measure.measure_rerun_floor(profiles.get_profile("smoke", resolve_data=False), runs=2, pause_s=-1)


def test_count_macs_of_an_int8_model_counts_its_float_twin():
    from vitsurvey.strategies import quant

    model = models.VisionTransformer(ViTConfig(img_size=28, patch_size=4, in_chans=1, num_classes=10,
                                               embed_dim=32, depth=2, num_heads=2)).eval()
    x = torch.randn(3, 1, 28, 28)
    int8 = quant.dynamic_int8(model)
    assert measure.count_macs(int8, x[:1]).total == measure.count_macs(model, x[:1]).total
    twin = measure.float_twin(int8)
    assert not measure.packed_weights(twin)
    packed = measure.packed_weights(int8)[0]  # the first packed weight: the first block's qkv
    assert torch.equal(twin.blocks[0].attn.qkv.weight, packed.dequantize())
    # int8 also rounds its activations on the fly, so outputs agree only to that rounding
    assert torch.allclose(twin(x), int8(x), atol=0.02)
