import copy
import dataclasses
import json

import pytest
import torch
from torch import nn

from vitsurvey import measure, metrics, models, profiles, results
from vitsurvey.measure import timing
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
    assert ok["throughput_low"] <= ok["throughput_img_s"] <= ok["throughput_high"]
    assert ok["timing_clock"] == "cpu-time" and "load_before" in ok
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


def test_relative_throughput_times_every_model_a_b_b_a_each_round(monkeypatch):
    calls = []
    real = timing._best_pass

    def spy(model, *args, **kwargs):
        calls.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(timing, "_best_pass", spy)
    a, b, c = (nn.Sequential(*[nn.Linear(64, 64) for _ in range(n)], nn.Flatten()) for n in (1, 4, 8))
    timings = measure.relative_throughput({"a": a, "b": b, "c": c}, (1, 1, 64), 4, rounds=2, max_rounds=None,
                                          warmup=0, iters=3)
    # round 1: a b c c b a; round 2 starts one model later and runs backwards: a c b b c a
    assert calls == [a, b, c, c, b, a, a, c, b, b, c, a]
    assert timings.rounds == 2 and timings.reference == "a" and timings.clock == "cpu-time"
    assert timings.rate("a").median > timings.rate("c").median > 0
    assert timings.ratio("c").median < 1 and timings.ratio("a").median == 1
    assert set(timings.wall_rates) == {"a", "b", "c"} and all(len(v) == 2 for v in timings.wall_rates.values())


def test_one_thread_per_model_by_default_and_the_whole_machine_on_request():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return x

    before = torch.get_num_threads()
    t = measure.relative_throughput({"p": Probe()}, (1, 1, 1), 1, rounds=1, warmup=0, iters=1)
    assert set(seen) == {1} and torch.get_num_threads() == before and t.clock == "cpu-time"
    assert "per-core" in t.label and t.columns()["timing_threads"] == 1
    seen.clear()
    whole = measure.relative_throughput({"p": Probe()}, (1, 1, 1), 1, rounds=1, warmup=0, iters=1, threads=None)
    assert set(seen) == {before} and whole.clock == "wall" and "whole-machine" in whole.label


def _scripted(monkeypatch, seconds_per_timing):
    """Make each timing of a model return the next scripted number of seconds (two timings per round: A B B A)."""
    script = {name: iter(s) for name, s in seconds_per_timing.items()}

    def fake(model, x, clock, iters, min_seconds):
        seconds = next(script[model.name])
        return seconds, seconds

    monkeypatch.setattr(timing, "_best_pass", fake)


class _Named(nn.Module):
    def __init__(self, name):
        super().__init__()
        self.name = name

    def forward(self, x):
        return x


def test_ratios_are_taken_within_rounds_so_drift_cancels(monkeypatch):
    # the machine halves its speed every round; the model always takes exactly half the reference's time
    drift = [2.0**k for k in range(6) for _ in range(2)]
    _scripted(monkeypatch, {"ref": drift, "new": [d / 2 for d in drift]})
    t = measure.relative_throughput({"ref": _Named("ref"), "new": _Named("new")}, (1, 1, 1), 1, rounds=6,
                                    max_rounds=None, resolution=0.0)
    ratio = t.ratio("new")
    assert ratio.median == ratio.low == ratio.high == 2.0
    assert t.rate("new").high / t.rate("new").low > 2  # the absolute rates are all over the place
    assert t.table().loc["new", "verdict"] == "faster"


def test_the_fastest_of_two_timings_counts_in_each_round(monkeypatch):
    # a stall in one of a round's two timings (the other process took the core) leaves the round's rate alone
    _scripted(monkeypatch, {"ref": [1.0, 1.0] * 5, "new": [0.5, 5.0] * 5})
    t = measure.relative_throughput({"ref": _Named("ref"), "new": _Named("new")}, (1, 1, 1), 1, rounds=5,
                                    max_rounds=None)
    assert t.rates["new"] == [2.0] * 5


def test_rounds_continue_until_the_interval_is_tight(monkeypatch):
    noisy = [1.0, 1.0, 0.6, 0.6, 1.5, 1.5, 0.7, 0.7, 1.3, 1.3] + [1.0] * 40
    _scripted(monkeypatch, {"ref": [1.0] * 50, "new": noisy})
    models = {"ref": _Named("ref"), "new": _Named("new")}
    t = measure.relative_throughput(models, (1, 1, 1), 1, rounds=5, max_rounds=25, tolerance=0.05)
    assert 5 < t.rounds < 25 and t.ratio("new").sampling_half_width <= 0.05
    _scripted(monkeypatch, {"ref": [1.0] * 50, "new": noisy})
    assert measure.relative_throughput(models, (1, 1, 1), 1, rounds=5, max_rounds=None).rounds == 5


def test_a_ratio_whose_interval_includes_one_is_within_noise(monkeypatch):
    _scripted(monkeypatch, {"ref": [1.0] * 10, "new": [x for x in (1.1, 0.85, 0.95, 1.05, 0.9) for _ in (0, 1)]})
    t = measure.relative_throughput({"ref": _Named("ref"), "new": _Named("new")}, (1, 1, 1), 1, rounds=5,
                                    max_rounds=None)
    assert t.ratio("new").verdict() == "within noise"
    assert "inconclusive at this precision" in metrics.speedup_phrase(t.ratio("new"))
    with pytest.raises(KeyError, match="timed: ref, new"):
        t.ratio("other")
    with pytest.raises(KeyError, match="reference 'x'"):
        measure.relative_throughput({"ref": _Named("ref")}, (1, 1, 1), 1, reference="x")


def test_every_timing_records_the_machines_load(monkeypatch):
    _scripted(monkeypatch, {"ref": [1.0] * 4, "new": [0.5] * 4})
    t = measure.relative_throughput({"ref": _Named("ref"), "new": _Named("new")}, (1, 1, 1), 1, rounds=2,
                                    max_rounds=None)
    cols = t.columns()
    assert {"timing_rounds", "timing_clock", "timing_threads", "load_before", "load_after", "cores",
            "steal_pct"} <= set(cols)
    assert cols["timing_rounds"] == 2 and cols["cores"] >= 1 and cols["load_before"] >= 0
    assert "interleaved rounds" in t.describe() and "machine load" in t.describe()


def test_a_busy_machine_is_warned_about():
    from vitsurvey.device import MachineState

    calm, busy = MachineState(0.5, 0.7, 2, 0.0), MachineState(3.1, 2.4, 2, None)
    assert not calm.busy and "Warning" not in calm.describe()
    assert busy.busy and "busier than its 2 cores" in busy.describe()
    # where the other processes' CPU time was measured over the block, it decides, not the lagging load average
    after_training = MachineState(2.13, 1.96, 2, 0.0, own_cores=1.0, other_cores=0.02)
    assert not after_training.busy and "other processes used 0.02 of the 2 cores" in after_training.describe()
    contended = MachineState(0.9, 1.1, 2, 0.0, own_cores=1.0, other_cores=1.6)
    assert contended.busy and "busier than its 2 cores" in contended.describe()
    assert contended.columns()["other_cores"] == 1.6
    assert busy.columns()["steal_pct"] is None


@pytest.mark.slow
def test_two_copies_of_one_model_read_within_noise_under_load():
    rows = measure.timing_check(("busy",), log=None)
    aa = next(r for r in rows if r["method"] == "A/A")
    assert aa["verdict"] == "within noise" and 0.90 <= aa["ratio_low"] <= 1.0 <= aa["ratio_high"] <= 1.10, aa
    assert aa["seconds"] < 60


@pytest.mark.slow
def test_half_the_depth_reads_faster_under_load_and_agrees_with_an_idle_rerun():
    rows = measure.timing_check(("idle", "busy"), log=None)
    idle, busy = (next(r for r in rows if r["method"] == "half depth" and r["setting"] == s) for s in ("idle", "busy"))
    for r in (idle, busy):
        assert r["verdict"] == "faster" and r["ratio_low"] > 1.3, r
    assert abs(busy["ratio"] / idle["ratio"] - 1) < 0.10
    assert busy["ratio_low"] <= idle["ratio_high"] and idle["ratio_low"] <= busy["ratio_high"]  # the reruns agree
    assert busy["seconds"] < 60


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


def test_models_with_tensor_subclass_weights_can_be_timed():
    # torchao's int8 weights are tensor subclasses that cannot be moved inside inference mode: the routine moves
    # every model to its device before it enters inference mode
    from vitsurvey.strategies import quant

    model = VisionTransformer(ViTConfig(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=1,
                                        num_heads=2)).eval()
    int8 = quant.torchao_int8(copy.deepcopy(model), compile=False)
    t = measure.relative_throughput({"fp32": model, "int8": int8}, (1, 28, 28), 2, rounds=1, max_rounds=None,
                                    warmup=0, iters=1)
    assert t.ratio("int8").median > 0


def test_cold_passes_and_latency_take_a_model_with_tensor_subclass_weights():
    """torchao's int8 weights are tensor subclasses, which cannot be moved inside inference mode (notebook 08 times
    one from cold)."""
    pytest.importorskip("torchao")
    from vitsurvey.strategies import quant

    model = quant.torchao_int8(torch.nn.Sequential(torch.nn.Linear(64, 64)), compile=False)
    assert len(measure.pass_times_ms(model, (64,), 4, passes=2)) == 2
    assert measure.latency_ms(model, (64,), warmup=1, iters=2) > 0
