import pytest
import torch

from vitsurvey import models
from vitsurvey.models import PRESETS, ViTConfig, VisionTransformer, counts
from vitsurvey.strategies import quant


@pytest.mark.parametrize("name", list(PRESETS))
def test_parameter_count_matches_timm(name):
    ours = VisionTransformer(PRESETS[name])
    reference = models.create(name)
    assert counts.count_params(ours) == counts.count_params(reference)
    assert counts.vit_params(PRESETS[name])["total"] == counts.count_params(ours)


def test_vit_tiny_has_the_published_count():
    assert counts.count_params(VisionTransformer(PRESETS["vit_tiny_patch16_224"])) == 5_717_416


@pytest.mark.parametrize(
    "cfg",
    [PRESETS["vit_tiny_patch16_224"], ViTConfig(img_size=28, patch_size=4, in_chans=1, num_classes=10,
                                                 embed_dim=48, depth=3, num_heads=3)],
    ids=["vit_tiny_224", "28x28x1"],
)
def test_same_logits_as_timm_after_loading_its_weights(cfg):
    torch.manual_seed(0)
    reference = models.timm_vit(cfg).eval()
    ours = VisionTransformer(cfg).eval()
    ours.load_state_dict(reference.state_dict())  # strict: every name and shape must match
    x = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        diff = (ours(x) - reference(x)).abs().max().item()
    assert diff <= 1e-5


def _small():
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig(img_size=28, patch_size=4, in_chans=1, num_classes=10,
                                       embed_dim=32, depth=3, num_heads=2)).eval()


def test_explicit_attention_equals_fused():
    model, x = _small(), torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        fused = model(x)
        explicit = model(x, token_step=lambda i, t, a: t)
    assert torch.allclose(fused, explicit, atol=1e-5)


def test_attention_maps_are_row_stochastic():
    maps = _small().attention_maps(torch.randn(2, 1, 28, 28))
    assert len(maps) == 3
    assert maps[0].shape == (2, 2, 50, 50)
    assert torch.allclose(maps[1].sum(-1), torch.ones(2, 2, 50), atol=1e-5)


def test_token_step_changes_the_token_set():
    model = _small()

    def keep_half(i, tokens, attn):
        return tokens[:, : 1 + (tokens.shape[1] - 1) // 2]

    assert model.token_counts(torch.randn(1, 1, 28, 28), keep_half) == [50, 25, 13]
    assert model(torch.randn(2, 1, 28, 28), token_step=keep_half).shape == (2, 10)


def test_invalid_configs_are_explained():
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        ViTConfig(img_size=30, patch_size=4)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        ViTConfig(embed_dim=100, num_heads=3)


def test_overrides_build_a_variant():
    m = VisionTransformer(PRESETS["vit_tiny_patch16_224"], img_size=32, patch_size=4, num_classes=10)
    assert m.cfg.num_tokens == 65 and m(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_create_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match="Did you mean: vit_tiny_patch16_224"):
        models.create("vit_tiny_patch16_22")


def test_create_accepts_pretrained_tags_without_downloading():
    m = models.create("vit_tiny_patch16_224.augreg_in21k", num_classes=10)
    assert not m.training and m.num_classes == 10


def test_config_of_plain_vits_only():
    assert ViTConfig.of(models.create("deit_tiny_patch16_224")) == PRESETS["vit_tiny_patch16_224"]
    assert ViTConfig.of(models.create("resnet18")) is None
    assert ViTConfig.of(models.create("deit_tiny_distilled_patch16_224")) is None


def test_split_qkv_cuts_the_fused_projection_per_head():
    from vitsurvey.models.layers import merge_heads, split_qkv

    B, N, h, d = 2, 5, 3, 4
    fused = torch.randn(B, N, 3 * h * d)
    q, k, v = split_qkv(fused, h, d)
    assert q.shape == (B, h, N, d)
    assert torch.equal(k[:, 1, :, 2], fused[:, :, h * d + d + 2])  # key of head 1, channel 2
    assert torch.equal(merge_heads(v), fused[:, :, 2 * h * d:])
    k2, v2 = split_qkv(fused[:, :, h * d:], h, d)  # two parts: keys and values
    assert torch.equal(k2, k) and torch.equal(v2, v)


def test_nonzero_params_counts_packed_int8_weights():
    model = _small()
    dense = counts.nonzero_params(model)
    assert dense == sum(int((p != 0).sum()) for p in model.parameters())
    int8 = quant.dynamic_int8(model)
    assert counts.packed_weights(int8)  # every Linear's weights left parameters() for a packed form
    assert 0.95 * dense <= counts.nonzero_params(int8) <= dense  # weights below half an int8 step become 0


def test_the_package_reexports_its_modules_names():
    from vitsurvey.models import layers, vit, zoo

    for module in (layers, vit, counts, zoo):
        for name in module.__all__:
            assert getattr(models, name) is getattr(module, name)
