"""Token mixers: shapes, counts against fvcore, exact special cases, and clear errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from torch import Tensor, nn

from vitsurvey import measure
from vitsurvey.models import Attention, TokenMixer, ViTConfig, VisionTransformer, counts, mixers, timm_vit
from vitsurvey.strategies import distill, pruning, tokens
from vitsurvey.studies import attention

BASE = ViTConfig(img_size=32, patch_size=4, in_chans=1, num_classes=10, embed_dim=48, depth=2, num_heads=3)
CONFIGS = {
    "attention": BASE,
    "attention, average pooling": dataclasses.replace(BASE, class_token=False, global_pool="avg"),
    "window": BASE.with_mixer("window", window=4),
    "linear, elu + 1": BASE.with_mixer("linear"),
    "linear, random features": BASE.with_mixer("linear", features=24),
    "lowrank": BASE.with_mixer("lowrank", rank=8),
    "sra": BASE.with_mixer("sra", reduction=2),
    "pool": BASE.with_mixer("pool"),
    "fourier": BASE.with_mixer("fourier"),
    "conv": BASE.with_mixer("conv", kernel=5),
}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("batch", [1, 3])
def test_every_mixer_keeps_shapes(name: str, batch: int) -> None:
    cfg = CONFIGS[name]
    model = VisionTransformer(cfg).eval()
    x = torch.randn(batch, 1, 32, 32)
    assert model(x).shape == (batch, 10)
    tokens_in = model.embed(x)
    assert tokens_in.shape == (batch, cfg.num_tokens, 48)
    y = model.blocks[1].attn(tokens_in) if cfg.mixer != "attention" else model.blocks[1].attn(tokens_in)[0]
    assert y.shape == tokens_in.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("name", CONFIGS)
def test_analytic_counts_equal_fvcore_and_the_module(name: str) -> None:
    cfg = CONFIGS[name]
    model = VisionTransformer(cfg)
    counted = measure.count_macs(model, torch.zeros(1, 1, 32, 32))
    assert counts.vit_macs(cfg)["total"] == counted.total
    assert counts.vit_params(cfg)["total"] == counts.count_params(model)
    unseen = {"aten::fft_rfft2", "aten::fft_irfft2", "aten::avg_pool2d", "aten::scaled_dot_product_attention"}
    assert not unseen & set(counted.skipped_operators)  # each of these is counted, not skipped


def test_default_config_is_unchanged_and_still_timm() -> None:
    cfg = ViTConfig()
    assert (cfg.mixer, cfg.class_token, cfg.global_pool, cfg.num_tokens) == ("attention", True, "token", 197)
    assert set(cfg.timm_kwargs()) == {"img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth",
                                      "num_heads", "mlp_ratio", "class_token", "global_pool"}
    for c in (BASE, CONFIGS["attention, average pooling"]):
        ours, theirs = VisionTransformer(c).eval(), timm_vit(c).eval()
        theirs.load_state_dict(ours.state_dict())
        x = torch.randn(2, 1, 32, 32)
        assert torch.equal(ours(x), theirs(x))
        assert ViTConfig.of(theirs) == c == ViTConfig.of(ours)
    with pytest.raises(ValueError, match="no 'pool' mixer"):
        CONFIGS["pool"].timm_kwargs()


def test_window_as_large_as_the_grid_is_softmax_attention() -> None:
    cfg = CONFIGS["attention, average pooling"]
    full = Attention(48, 3)
    window = mixers.WindowAttention(48, 3, grid=8, window=8, shift=True)
    window.load_state_dict(full.state_dict())
    x = torch.randn(2, cfg.num_tokens, 48)
    torch.testing.assert_close(window(x), full(x)[0])


def test_window_attention_is_local() -> None:
    m = mixers.WindowAttention(48, 3, grid=8, window=4, shift=False)
    x = torch.randn(1, 64, 48)
    x2 = x.clone()
    x2[0, 0] += 1.0  # token (0, 0): only the top-left 4 x 4 window may change
    changed = (m(x2) - m(x)).abs().sum(-1).reshape(8, 8) > 0
    assert changed[:4, :4].all() and not changed[4:].any() and not changed[:, 4:].any()


def test_lowrank_with_identity_projections_is_softmax_attention() -> None:
    full = Attention(48, 3)
    low = mixers.LowRankAttention(48, 3, tokens=17, rank=17)
    low.load_state_dict({**full.state_dict(), "E": torch.eye(17), "F": torch.eye(17)})
    x = torch.randn(2, 17, 48)
    torch.testing.assert_close(low(x), full(x)[0])
    with pytest.raises(ValueError, match="built for 17 tokens, not 16"):
        low(torch.randn(1, 16, 48))


def test_random_features_approximate_softmax_attention_better_as_they_grow() -> None:
    torch.manual_seed(0)
    full = Attention(48, 3)
    x = torch.randn(4, 17, 48)
    errors = []
    with torch.no_grad():
        exact = full(x)[0]
        for m in (8, 64, 1024):  # a Monte Carlo estimate: the error falls about as 1 / sqrt(m)
            approx = mixers.LinearAttention(48, 3, features=m)
            approx.load_state_dict(full.state_dict())  # the random projection is not part of the state dict
            errors.append(float((approx(x) - exact).norm() / exact.norm()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.15


def test_shifted_windows_never_mix_tokens_that_are_not_neighbours() -> None:
    torch.manual_seed(0)
    g, m = 4, 2
    layer = mixers.WindowAttention(12, 2, grid=g, window=m, shift=True)  # shift 1
    x = torch.randn(1, g * g, 12)
    # by hand: after rolling by -1, token (r, c) sits at ((r - 1) % g, (c - 1) % g); two tokens may attend to each
    # other where their rolled positions share a window and they were neighbours in the image (no wrap-around)
    def rolled(t: int) -> tuple[int, int]:
        return ((t // g - 1) % g, (t % g - 1) % g)

    def allowed(a: int, b: int) -> bool:
        (ra, ca), (rb, cb) = rolled(a), rolled(b)
        same_window = (ra // m, ca // m) == (rb // m, cb // m)
        return same_window and abs(a // g - b // g) < m and abs(a % g - b % g) < m

    with torch.no_grad():
        q, k, v = layer.heads(x)  # (1, heads, N, d)
        out = torch.zeros_like(q)
        for a in range(g * g):
            keys = [b for b in range(g * g) if allowed(a, b)]
            weights = torch.softmax(q[:, :, a:a + 1] @ k[:, :, keys].transpose(-2, -1) / q.shape[-1] ** 0.5, -1)
            out[:, :, a] = (weights @ v[:, :, keys])[:, :, 0]
        want = layer.proj(out.transpose(1, 2).reshape(1, g * g, 12))
        torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)
        # the corners (0, 0) and (3, 3) share a rolled window but lie at opposite edges: no influence
        x2 = x.clone()
        x2[0, 0] += 10.0
        assert torch.equal(layer(x2)[0, g * g - 1], layer(x)[0, g * g - 1])
        x3 = x.clone()
        x3[0, 1 * g + 1] += 10.0  # (1, 1) and (2, 2) share a rolled window and are neighbours: influence
        assert not torch.allclose(layer(x3)[0, 2 * g + 2], layer(x)[0, 2 * g + 2])


def test_random_features_carry_performers_epsilon() -> None:
    layer = mixers.LinearAttention(4, 1, features=2)  # head width d = 4, m = 2 features
    layer.omega = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])  # w_1 = e_1, w_2 = e_2
    q = torch.tensor([[[[2.0, 0.0, 0.0, 0.0], [0.0, 40.0, 0.0, 0.0]]]])  # (B, h, N, d): one small, one huge query
    x = q * 4**-0.25  # q / d^(1/4)
    for n in range(2):  # by hand: (exp(w^T x - |x|^2 / 2 - max_j w_j^T x) + eps) / sqrt(m)
        proj = [float(x[0, 0, n, 0]), float(x[0, 0, n, 1])]
        sq = float((x[0, 0, n] ** 2).sum())
        want = [(math.exp(p - sq / 2 - max(proj)) + 1e-4) / math.sqrt(2) for p in proj]
        got = layer.feature_map(q, is_query=True)[0, 0, n].tolist()
        assert got == pytest.approx(want, rel=1e-5)
    # the huge query's features underflow to 0 without eps; with it, every feature is at least eps / sqrt(m)
    assert (layer.feature_map(q, is_query=True) >= 1e-4 / math.sqrt(2) * (1 - 1e-6)).all()
    keys = layer.feature_map(q, is_query=False)  # keys: one shift for the whole head
    shift = float(x[0, 0].max())
    sq = float((x[0, 0, 0] ** 2).sum())
    assert float(keys[0, 0, 0, 0]) == pytest.approx((math.exp(float(x[0, 0, 0, 0]) - sq / 2 - shift) + 1e-4)
                                                    / math.sqrt(2), rel=1e-5)


def test_fourier_with_a_unit_filter_is_the_identity() -> None:
    m = mixers.FourierMixer(48, grid=8)
    with torch.no_grad():
        m.filter.zero_()
        m.filter[..., 0] = 1.0
    x = torch.randn(2, 64, 48)
    torch.testing.assert_close(m(x), x, atol=1e-5, rtol=1e-5)


def test_pool_of_a_constant_grid_is_zero() -> None:
    m = mixers.PoolMixer(grid=8, kernel=3)
    assert m(torch.full((2, 64, 48), 3.0)).abs().max() < 1e-6


@pytest.mark.parametrize("name", ["window", "linear, elu + 1", "linear, random features", "lowrank"])
def test_crossover_is_where_the_counts_cross(name: str) -> None:
    cfg = CONFIGS[name]
    n_star = mixers.crossover_tokens(cfg)
    softmax = dataclasses.replace(cfg, mixer="attention", window=0, features=0, rank=0)

    def cheaper(n: int) -> bool:
        return sum(mixers.macs(cfg, n).values()) < sum(mixers.macs(softmax, n).values())

    below, above = math.floor(n_star - 1e-9), math.floor(n_star) + 1
    assert not cheaper(below) and cheaper(above)


@pytest.mark.parametrize("name", ["sra", "pool", "fourier", "conv"])
def test_mixers_cheaper_at_every_size(name: str) -> None:
    cfg = CONFIGS[name]
    assert mixers.crossover_tokens(cfg) == 0.0
    softmax = dataclasses.replace(cfg, mixer="attention", reduction=0, kernel=0)
    for n in (4, 16, 64, 1024, 16384):
        assert sum(mixers.macs(cfg, n).values()) < sum(mixers.macs(softmax, n).values())


@pytest.mark.parametrize(("change", "message"), [
    ({"mixer": "window", "window": 3}, "window=3 does not divide the 8 x 8 token grid"),
    ({"mixer": "window", "window": 0}, "window=0 does not divide"),
    ({"mixer": "sra", "reduction": 3}, "reduction=3 does not divide the 8 x 8 token grid"),
    ({"mixer": "lowrank", "rank": 0}, "rank=0"),
    ({"mixer": "lowrank", "rank": -2}, "rank=-2"),
    ({"mixer": "linear", "features": -1}, "features=-1"),
    ({"mixer": "linear", "features": 2.5}, "features=2.5 must be a whole number"),
    ({"mixer": "pool", "kernel": 4}, "odd kernel"),
    ({"mixer": "conv", "kernel": 0}, "odd kernel"),
    ({"mixer": "attention", "window": 4}, "window=4 is set, but mixer 'attention' does not use it"),
    ({"mixer": "fourier"}, "class token has no place"),
    ({"mixer": "swin"}, "Unknown mixer 'swin'"),
    ({"global_pool": "max"}, "global_pool must be"),
    ({"class_token": False}, "use global_pool='avg'"),
])
def test_invalid_settings_are_clear_errors(change: dict, message: str) -> None:
    grid_free = {"class_token": False, "global_pool": "avg"} if change.get("mixer") in mixers.GRID_MIXERS else {}
    if change.get("mixer") == "fourier":
        grid_free = {}
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(BASE, **{**grid_free, **change})


def test_with_mixer_takes_only_its_own_setting() -> None:
    with pytest.raises(ValueError, match="takes window, not rank"):
        BASE.with_mixer("window", rank=4)
    with pytest.raises(ValueError, match="Unknown mixer"):
        BASE.with_mixer("nystrom")
    cfg = BASE.with_mixer("window", window=4).with_mixer("linear")  # the window setting is reset
    assert (cfg.window, cfg.features, cfg.class_token) == (0, 0, False)


def test_strategies_built_on_attention_refuse_other_mixers() -> None:
    model = VisionTransformer(CONFIGS["pool"])
    x = torch.randn(1, 1, 32, 32)
    with pytest.raises(ValueError, match="forms no attention matrix"):
        model.attention_maps(x)
    for build in (lambda: tokens.ToMe(model, 2), lambda: pruning.prune_structured(model, 0.5),
                  lambda: tokens.WithTokenStep(model, tokens.schedule_step([64, 32])),
                  lambda: distill.DistilledViT(CONFIGS["window"])):
        with pytest.raises(ValueError, match="needs softmax attention in every block and a class token"):
            build()
    with pytest.raises(ValueError, match="fixed token count"):
        counts.vit_macs(CONFIGS["window"], tokens=10)


class _Shift(TokenMixer):
    """A throw-away mixer for the registry test: each token becomes its right neighbour on the grid (kernel-wide
    roll); no parameters, one MAC per element."""

    def __init__(self, grid: int, kernel: int) -> None:
        super().__init__()
        self.grid, self.kernel = grid, kernel

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        return x.reshape(B, self.grid, self.grid, D).roll(self.kernel, dims=2).reshape(B, N, D)

    @classmethod
    def build(cls, cfg: ViTConfig, index: int) -> nn.Module:
        return cls(cfg.grid, cfg.kernel)

    @classmethod
    def check(cls, cfg: ViTConfig) -> None:
        if cfg.kernel >= cfg.grid:
            raise ValueError(f"shift kernel={cfg.kernel} must be smaller than the grid.")

    @staticmethod
    def macs(cfg: ViTConfig, tokens: int) -> dict[str, int]:
        return {"shift": tokens * cfg.embed_dim}

    @staticmethod
    def params(cfg: ViTConfig) -> int:
        return 0

    @staticmethod
    def crossover_tokens(cfg: ViTConfig) -> float:
        return 0.0


def test_a_registered_mixer_is_built_checked_and_counted_through_the_registry() -> None:
    before = (dict(mixers.MIXERS), mixers.SETTINGS, mixers.GRID_MIXERS)
    mixers.register("shift", setting="kernel", grid=True)(_Shift)
    try:
        assert mixers.MIXERS["shift"] == "kernel" and "shift" in mixers.GRID_MIXERS
        assert mixers.SETTINGS == before[1]  # kernel is an existing field: no new setting
        with pytest.raises(ValueError, match="registered already"):
            mixers.register("shift")(_Shift)
        cfg = BASE.with_mixer("shift", kernel=1)
        assert (cfg.class_token, cfg.global_pool) == (False, "avg")
        with pytest.raises(ValueError, match="shift kernel=8 must be smaller"):
            BASE.with_mixer("shift", kernel=8)
        with pytest.raises(ValueError, match="class token has no place"):
            dataclasses.replace(cfg, class_token=True, global_pool="token")
        assert isinstance(mixers.build(cfg, 0), _Shift)
        assert mixers.macs(cfg) == {"shift": 64 * 48} and mixers.macs(cfg, 10) == {"shift": 480}
        assert mixers.params(cfg) == 0 and mixers.crossover_tokens(cfg) == 0.0
        model = VisionTransformer(cfg)
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
        assert counts.vit_params(cfg)["mixer"] == 0 and counts.vit_macs(cfg)["shift"] == 2 * 64 * 48
        assert counts.vit_params(cfg)["total"] == counts.count_params(model)
    finally:
        mixers.unregister("shift")
    assert (mixers.MIXERS, mixers.SETTINGS, mixers.GRID_MIXERS) == before
    with pytest.raises(ValueError, match="Unknown mixer 'shift'"):
        BASE.with_mixer("shift", kernel=1)


def test_the_top_level_module_reexports_the_mixers_and_the_attention_analysis() -> None:
    from vitsurvey import mixers as top

    for home in (mixers, attention):
        for name in home.__all__:
            assert getattr(top, name) == getattr(home, name)
    assert top.Attention is Attention


def test_best_low_rank_is_exact_at_full_rank_and_improves_with_rank() -> None:
    torch.manual_seed(0)
    attn = torch.randn(2, 3, 10, 10).softmax(-1)
    torch.testing.assert_close(attention.best_low_rank(attn, 10), attn, atol=1e-5, rtol=1e-5)
    errors = [float((attention.best_low_rank(attn, k) - attn).norm()) for k in (1, 3, 6, 9)]
    assert errors == sorted(errors, reverse=True) and errors[-1] > 0
    rank_one = torch.outer(torch.rand(10), torch.rand(10))
    torch.testing.assert_close(attention.best_low_rank(rank_one, 1), rank_one, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="rank must be at least 1"):
        attention.best_low_rank(attn, 0)


def test_truncating_attention_to_full_rank_changes_nothing() -> None:
    model = VisionTransformer(BASE).eval()
    x = torch.randn(2, 1, 32, 32)
    full = attention.truncate_attention(model, BASE.num_tokens)
    torch.testing.assert_close(full(x), model(x), atol=1e-4, rtol=1e-4)
    low = attention.truncate_attention(model, 2)
    assert not torch.allclose(low(x), model(x), atol=1e-3)
    assert max(torch.linalg.matrix_rank(m[0, 0]).item() for m in low.attention_maps(x)) <= 2
    assert isinstance(model.blocks[0].attn, Attention) and type(model.blocks[0].attn) is Attention  # original kept
    with pytest.raises(ValueError, match="needs softmax attention"):
        attention.truncate_attention(VisionTransformer(CONFIGS["conv"]), 2)


def test_circulant_share_is_one_for_translation_invariant_mixing() -> None:
    g = 4
    kernel = torch.rand(g, g)
    idx = torch.arange(g)
    # C[(i, j), (i', j')] = kernel[(i' - i) mod g, (j' - j) mod g], plus one prefix row and column
    c = kernel[(idx[None, None, :, None] - idx[:, None, None, None]) % g,
               (idx[None, None, None, :] - idx[None, :, None, None]) % g].reshape(g * g, g * g)
    attn = torch.zeros(1, g * g + 1, g * g + 1)
    attn[0, 1:, 1:] = c
    torch.testing.assert_close(attention.circulant_projection(attn, g)[0], kernel)
    assert abs(float(attention.circulant_share(attn, g)) - 1.0) < 1e-5
    torch.manual_seed(0)
    random = torch.rand(5, g * g + 1, g * g + 1)
    share = attention.circulant_share(random, g)
    assert share.shape == (5,) and ((share > 0) & (share < 1)).all()
    # one kernel for all five keeps at most what each keeps with its own (Jensen); the same circulant five times, all
    assert float(attention.circulant_share(random, g, shared=True)) < float(share.max())
    assert abs(float(attention.circulant_share(attn.expand(5, -1, -1), g, shared=True)) - 1.0) < 1e-5
    with pytest.raises(ValueError, match="not a 3 x 3 grid"):
        attention.circulant_share(random, 3)


def test_singular_values_match_the_definition() -> None:
    torch.manual_seed(0)
    attn = torch.randn(3, 6, 6).softmax(-1)
    s = attention.singular_values(attn)
    gram = torch.linalg.eigvalsh((attn.mT @ attn).double()).flip(-1).clamp_min(0).sqrt()
    torch.testing.assert_close(s, gram, atol=1e-6, rtol=1e-6)
    assert torch.get_num_threads() >= 1
