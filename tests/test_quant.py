import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitsurvey.strategies import quant

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
data = st.lists(finite, min_size=2, max_size=64).map(lambda v: torch.tensor(v))
bits = st.integers(2, 8)


@settings(max_examples=100, deadline=None)
@given(data, bits, st.booleans(), st.sampled_from(["minmax", "percentile", "mse"]))
def test_uniform_error_within_half_a_step_inside_the_range(x, b, symmetric, method):
    q = quant.calibrate(x, b, symmetric=symmetric, method=method, percentile=99.0, grid=10)
    lo, hi = q.clip_range()
    inside = x.clamp(float(lo), float(hi))
    assert ((q(inside) - inside).abs() <= q.scale / 2 * (1 + 1e-5) + 1e-6).all()


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), bits, st.booleans())
def test_per_channel_scales_and_error(out_ch, in_ch, b, symmetric):
    w = torch.randn(out_ch, in_ch) * torch.logspace(-2, 2, out_ch)[:, None]
    q = quant.calibrate(w, b, symmetric=symmetric, axis=0)
    assert q.scale.shape == (out_ch,) and q.zero_point.shape == (out_ch,)
    err = (q(w) - w).abs()
    assert (err <= q.scale[:, None] / 2 * (1 + 1e-5) + 1e-6).all()  # min-max covers every channel


def test_per_channel_beats_per_tensor_on_channels_of_different_range():
    w = torch.randn(8, 64) * torch.logspace(-3, 1, 8)[:, None]
    def relative_error(q):  # of each channel, relative to that channel's own power
        return ((q(w) - w).pow(2).mean(1) / w.pow(2).mean(1))

    per_tensor, per_channel = relative_error(quant.calibrate(w, 4)), relative_error(quant.calibrate(w, 4, axis=0))
    assert per_tensor[0] > 0.9  # the narrowest channel rounds to zero under the shared scale
    assert (per_channel < 0.05).all()


def test_mse_and_percentile_calibration_handle_an_outlier():
    x = torch.cat([torch.randn(2000), torch.tensor([80.0])])
    minmax, mse = quant.calibrate(x, 4, method="minmax"), quant.calibrate(x, 4, method="mse")
    pct = quant.calibrate(x, 4, method="percentile", percentile=99.9)
    assert (mse(x) - x).pow(2).mean() <= (minmax(x) - x).pow(2).mean()
    assert pct.scale < minmax.scale / 5


def test_sixteen_bit_fake_quantization_is_near_identity():
    x = torch.randn(1000)
    q = quant.calibrate(x, 16, symmetric=False)
    assert torch.allclose(q(x), x, atol=float(x.abs().max()) * 2e-5)


def test_gradients_flow_straight_through():
    x = torch.randn(50, requires_grad=True)
    for q in (quant.calibrate(x, 4), quant.Log2Quantizer(4), quant.TwinUniform(0.01, 3, 6)):
        x.grad = None
        q(x.abs() if isinstance(q, quant.Log2Quantizer) else x).sum().backward()
        assert x.grad is not None and torch.allclose(x.grad.abs(), torch.ones(50))


@pytest.mark.parametrize("b", [2, 3, 4, 8])
def test_log2_is_exact_on_powers_of_two(b):
    q = quant.Log2Quantizer(b)
    x = 2.0 ** -torch.arange(0, 2**b, dtype=torch.float32)
    assert torch.equal(q(x), x)


@settings(max_examples=100, deadline=None)
@given(st.floats(0.0, 1.0, exclude_min=True), st.integers(2, 6))
def test_log2_error_within_half_a_step_in_the_log_domain(p, b):
    q = quant.Log2Quantizer(b)
    x = torch.tensor([p], dtype=torch.float32)
    if p < 2.0 ** -q.qmax:  # below the smallest level: clipped
        return
    assert abs(math.log2(float(q(x))) - math.log2(p)) <= 0.5 + 1e-5


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1, width=32), min_size=1, max_size=50), st.integers(3, 8), st.integers(0, 5))
def test_twin_uniform_error_within_half_of_each_regions_step(values, b, k):
    x = torch.tensor(values)
    q = quant.TwinUniform(1.0 / (2 ** (b - 1) - 1) / 2**k, k, b)
    (lo1, hi1), (lo2, hi2) = q.ranges()
    x = x.clamp(lo2, hi2)
    err = (q(x) - x).abs()
    in_r1 = (x >= lo1) & (x <= hi1)
    assert (err[in_r1] <= q.delta1 / 2 * (1 + 1e-5) + 1e-7).all()
    assert (err[~in_r1] <= q.delta2 / 2 * (1 + 1e-5) + 1e-7).all()


def test_twin_uniform_calibration_beats_one_uniform_range_on_softmax_like_values():
    probs = torch.softmax(torch.randn(64, 197) * 3, dim=-1).flatten()
    twin = quant.TwinUniform.calibrate(probs, bits=6)
    uniform = quant.calibrate(probs, 6, symmetric=False)
    assert (twin(probs) - probs).pow(2).mean() < (uniform(probs) - probs).pow(2).mean()


def test_power_of_two_factors_pick_alpha_by_squared_error_with_one_zero_point():
    # 2 bits: codes 0..3. The layer spans [-3, 3]: coarsest step 6 / 3 = 2, zero point 0 - round(-3 / 2) = 2 (round
    # half to even), steps 2 / 8 * 2^alpha = 0.25, 0.5, 1, 2 for alpha 0..3.
    x = torch.tensor([[-3.0, -0.5], [3.0, 0.25]])  # channel 0 wide, channel 1 narrow
    q, alpha = quant.power_of_two_factors(x, bits=2)
    assert alpha.tolist() == [3.0, 0.0]
    assert q.scale.tolist() == [2.0, 0.25] and q.zero_point.tolist() == [2.0, 2.0]  # one zero point for the layer

    def mse(values: list[float], step: float) -> float:  # the channel's squared error at one step, by hand
        codes = [min(max(round(v / step) + 2, 0), 3) for v in values]
        return sum(((c - 2) * step - v) ** 2 for c, v in zip(codes, values)) / len(values)

    for c, values in enumerate(([-3.0, 3.0], [-0.5, 0.25])):
        errors = [mse(values, 0.25 * 2**a) for a in range(4)]
        assert errors.index(min(errors)) == alpha[c]
    assert mse([-3.0, 3.0], 2.0) == 1.0 and mse([-0.5, 0.25], 0.25) == 0.0
    assert torch.equal(q(x)[:, 1], x[:, 1])  # the narrow channel is exact on its fine step


def test_power_of_two_factors_follow_wide_channels():
    x = torch.randn(32, 197, 16) * torch.logspace(-1, 1.5, 16)
    q, alpha = quant.power_of_two_factors(x, bits=8)
    assert alpha.shape == (16,) and alpha.min() >= 0 and alpha.max() <= 3
    assert alpha[-1] > alpha[0]  # the widest channel takes a coarser step than the narrowest
    assert torch.allclose(q.scale / q.scale.min(), 2 ** (alpha - alpha.min()))
    assert q.zero_point.unique().numel() == 1
    with pytest.raises(ValueError, match="max_alpha"):
        quant.power_of_two_factors(x, max_alpha=-1)


@pytest.mark.parametrize("b", [0, 17, 3.5, -2])
def test_invalid_bit_widths(b):
    with pytest.raises(ValueError, match="bits must be an integer from 1 to 16"):
        quant.calibrate(torch.randn(10), b)
    with pytest.raises(ValueError, match="bits must be an integer"):
        quant.Log2Quantizer(b)


def test_empty_calibration_sets():
    for call in (lambda: quant.calibrate(torch.empty(0)), lambda: quant.TwinUniform.calibrate(torch.empty(0)),
                 lambda: quant.power_of_two_factors(torch.empty(0, 4))):
        with pytest.raises(ValueError, match="empty"):
            call()


def test_unknown_calibration_method():
    with pytest.raises(ValueError, match="minmax, percentile, mse"):
        quant.calibrate(torch.randn(10), 8, method="kl")


@pytest.fixture(scope="module")
def tiny():
    """A small ViT trained for a few seconds on the synthetic set, and its test loader."""
    from vitsurvey import data, train
    from vitsurvey.models import VisionTransformer
    from vitsurvey.profiles import PROFILES

    p = PROFILES["smoke"].replace(dataset="synthetic", train_samples=1024, test_samples=256, epochs=4,
                                  batch_size=32, lr=3e-3, augment=False)
    model = VisionTransformer(train.baseline_config(p))
    tr, te = data.loaders(p)
    train.fit(model, tr, te, p, log=None)
    return model.eval(), te


def test_quantized_vit_error_shrinks_with_bits_and_vanishes_at_sixteen(tiny):
    model, test = tiny
    images = next(iter(test))[0][:64]
    with torch.no_grad():
        ref = model(images)
        errors = {}
        for b in (4, 8, 16):
            qvit = quant.QuantViT(model, quant.QuantConfig(w_bits=b, a_bits=b)).calibrate(images)
            errors[b] = float((qvit(images) - ref).norm() / ref.norm())
    assert errors[16] < 1e-3 < errors[8] < errors[4]


@pytest.mark.parametrize("config", [
    quant.QuantConfig(softmax="log2"), quant.QuantConfig(softmax="twin", gelu="twin"), quant.QuantConfig(layernorm="ptf"),
    quant.QuantConfig(calibration="percentile"),
])
def test_vit_specific_quantizers_run_and_stay_close_at_eight_bits(tiny, config):
    model, test = tiny
    images = next(iter(test))[0][:64]
    with torch.no_grad():
        ref = model(images)
        out = quant.QuantViT(model, config).calibrate(images)(images)
    assert float((out - ref).norm() / ref.norm()) < 0.2


def test_quantization_aware_training_gets_gradients(tiny):
    import copy

    model, test = copy.deepcopy(tiny[0]), tiny[1]
    images, labels = next(iter(test))
    qvit = quant.QuantViT(model.train(), quant.QuantConfig(4, 4)).calibrate(images[:32])
    torch.nn.functional.cross_entropy(qvit(images[:32]), labels[:32]).backward()
    grads = [p.grad for p in model.blocks.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


def test_quantized_vit_needs_calibration_and_valid_settings(tiny):
    model, _ = tiny
    with pytest.raises(RuntimeError, match="not calibrated"):
        quant.QuantViT(model, quant.QuantConfig())(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match="empty"):
        quant.QuantViT(model, quant.QuantConfig()).calibrate(torch.empty(0, 1, 28, 28))
    with pytest.raises(ValueError, match="Unknown softmax quantizer"):
        quant.QuantConfig(softmax="exp")
    with pytest.raises(ValueError, match="bits must be"):
        quant.QuantConfig(w_bits=0)


def test_activations_cover_every_site(tiny):
    model, test = tiny
    acts = quant.QuantViT(model, quant.QuantConfig()).activations(next(iter(test))[0][:8])
    sites = {name.split(".", 1)[1] for name in acts}
    assert sites == {"ln1_in", "qkv_in", "q", "k", "v", "attn", "proj_in", "ln2_in", "fc1_in", "gelu_out"}
    assert len(acts) == 10 * len(model.blocks)
    attn = acts["0.attn"]
    assert torch.allclose(attn.sum(-1), torch.ones_like(attn.sum(-1)), atol=1e-5)


def test_dynamic_int8_is_real_int8_and_close(tiny):
    from vitsurvey import measure

    model, test = tiny
    images = next(iter(test))[0][:32]
    int8 = quant.dynamic_int8(model)
    with torch.no_grad():
        ref, out = model(images), int8(images)
    assert float((out - ref).norm() / ref.norm()) < 0.1
    assert measure.serialized_bytes(int8) < measure.serialized_bytes(model)
    assert any("quantized" in type(m).__module__ for m in int8.modules())


def test_torchao_int8_is_close(tiny):
    pytest.importorskip("torchao")
    model, test = tiny
    images = next(iter(test))[0][:32]
    int8 = quant.torchao_int8(model, compile=False)
    with torch.no_grad():
        ref, out = model(images), int8(images)
    assert float((out - ref).norm() / ref.norm()) < 0.1


def test_stored_bytes_count_quantized_weights_at_their_bit_width(tiny):
    vit = tiny[0]
    linears = [m for blk in vit.blocks for m in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2)]
    n_weights = sum(m.weight.numel() for m in linears)
    n_rows = sum(m.weight.shape[0] for m in linears)
    n_all = sum(p.numel() for p in vit.parameters())
    at = {b: quant.QuantViT(vit, quant.QuantConfig(b, 8)).stored_bytes() for b in (4, 8)}
    assert at[8] == n_weights + 4 * n_rows + 4 * (n_all - n_weights)
    assert at[8] - at[4] == n_weights // 2
    assert at[4] < at[8] < 4 * n_all
