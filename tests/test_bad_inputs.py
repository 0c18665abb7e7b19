"""Inputs that would run but give a silently wrong result are refused, with a message that says what to do."""

import math

import pandas as pd
import pytest
import torch

from vitsurvey import measure, metrics
from vitsurvey.models import ViTConfig, VisionTransformer
from vitsurvey.profiles import PROFILES
from vitsurvey.strategies import quant, tokens

CFG = ViTConfig(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def vit():
    return VisionTransformer(CFG).eval()


@pytest.mark.parametrize("field, value", [
    ("patch_size", 0), ("num_heads", 0), ("img_size", 0), ("embed_dim", -32), ("depth", 0), ("in_chans", 0),
    ("num_classes", 0), ("patch_size", 3.5), ("depth", True), ("mlp_ratio", 0.0), ("mlp_ratio", float("nan")),
])
def test_config_sizes_must_be_positive(field, value):
    with pytest.raises(ValueError, match=field):
        ViTConfig(**{**CFG.__dict__, field: value})


@pytest.mark.parametrize("shape, hint", [
    ((2, 1, 32, 32), "resize the images"),  # would be cropped to 28 px by the strided convolution
    ((2, 1, 34, 34), "resize the images"),
    ((2, 1, 21, 21), "resize the images"),
    ((2, 3, 28, 28), r"\(batch, 1, 28, 28\)"),  # wrong channel count
    ((1, 28, 28), "add a batch dimension"),  # unbatched
])
def test_vit_refuses_images_of_another_shape(vit, shape, hint):
    with pytest.raises(ValueError, match=hint):
        vit(torch.zeros(shape))


def test_vit_takes_its_own_shape(vit):
    assert vit(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("tolerance", [float("nan"), float("inf"), 0.0, -0.1])
def test_patch_slimming_tolerance_must_be_a_positive_finite_error(vit, tolerance):
    with pytest.raises(ValueError, match="tolerance"):
        tokens.patch_slimming(vit, torch.zeros(4, 1, 28, 28), tolerance)


def test_patch_slimming_needs_sample_images(vit):
    with pytest.raises(ValueError, match="non-empty batch"):
        tokens.patch_slimming(vit, torch.zeros(0, 1, 28, 28), 0.1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_calibration_data_must_be_finite(bad):
    x = torch.randn(100)
    x[3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        quant.calibrate(x, 8)


def test_quantvit_calibration_images_must_be_finite(vit):
    images = torch.zeros(4, 1, 28, 28)
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        quant.QuantViT(vit, quant.QuantConfig(8, 8)).calibrate(images)


def test_one_bit_symmetric_quantization_is_refused():
    with pytest.raises(ValueError, match="at least 2 bits"):
        quant.calibrate(torch.randn(100), 1, symmetric=True)
    with pytest.raises(ValueError, match="at least 2 bits"):
        quant.QuantConfig(w_bits=1, a_bits=8)
    one_bit = quant.calibrate(torch.rand(100), 1, symmetric=False)  # asymmetric 1 bit is defined: {lo, hi}
    assert torch.unique(one_bit(torch.rand(100))).numel() <= 2


@pytest.mark.parametrize("r", [2.5, [1.5, 1], [1, True]])
def test_tome_merges_are_whole_numbers(vit, r):
    with pytest.raises(ValueError, match="whole numbers"):
        tokens.ToMe(vit, r)


@pytest.mark.parametrize("total, depth", [(2.5, 2), (-1, 2), (4, 0), (4, 1.5)])
def test_tome_schedule_needs_whole_numbers(total, depth):
    with pytest.raises(ValueError, match="whole number"):
        tokens.tome_schedule(total, depth)


def test_evit_blocks_must_lie_inside_the_model(vit):
    with pytest.raises(ValueError, match="blocks 0 to 1"):
        tokens.EViT(vit, 0.5, [1, 5])
    with pytest.raises(ValueError, match="block indices"):
        tokens.EViT(vit, 0.5, [-1])
    with pytest.raises(ValueError, match="block indices"):
        tokens.EViT(vit, 0.5, [0.5])
    tokens.EViT(vit, 0.5, [0, 1])  # inside: accepted


@pytest.mark.parametrize("kwargs, match", [
    ({"iters": 0}, "iters"), ({"iters": -1}, "iters"), ({"warmup": -1}, "warmup"),
    ({"min_seconds": float("nan")}, "min_seconds"), ({"batch_sizes": (0,)}, "batch sizes"),
    ({"batch_sizes": ()}, "batch sizes"),
])
def test_throughput_refuses_timings_that_time_nothing(vit, kwargs, match):
    with pytest.raises(ValueError, match=match):
        measure.throughput(vit, (1, 28, 28), **{"batch_sizes": (1,), **kwargs})


def test_latency_needs_a_timed_pass(vit):
    with pytest.raises(ValueError, match="iters"):
        measure.latency_ms(vit, (1, 28, 28), iters=0)


@pytest.mark.parametrize("field, value", [
    ("bench_iters", 0), ("timing_rounds", 0), ("timing_batch", -4), ("epochs", 0), ("batch_size", 0),
    ("lr", 0.0), ("lr", float("nan")), ("bench_min_seconds", -1.0), ("train_samples", 0), ("bench_warmup", -1),
    ("sweep_batch_sizes", (1, 0)), ("bench_iters", 2.5),
])
def test_profiles_refuse_sizes_that_measure_nothing(field, value):
    with pytest.raises(ValueError, match=field):
        PROFILES["smoke"].replace(**{field: value})


@pytest.mark.parametrize("weights", [{"params": float("nan")}, {"params": float("inf")}, {"params": -1.0}])
def test_eer_weights_must_be_finite_and_non_negative(weights):
    frame = pd.DataFrame({"params": [1.0, 2.0], "error": [10.0, 20.0]})
    with pytest.raises(ValueError, match="finite, non-negative"):
        metrics.efficient_error_rate(frame, weights, "error")


def test_every_shipped_profile_is_valid():
    for profile in PROFILES.values():
        assert profile.replace() == profile
        assert math.isfinite(profile.lr)


@pytest.mark.parametrize("flag", ["--batch-size", "--img-size"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_cli_profile_refuses_zero_and_negative_sizes(flag, value, capsys):
    from vitsurvey.__main__ import main

    assert main(["profile", "vit_tiny_patch16_224", "--profile", "smoke", flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and flag in err and "Traceback" not in err
