import pytest
import torch

from vitsurvey import measure, models
from vitsurvey.models import PRESETS, ViTConfig, VisionTransformer


@pytest.mark.parametrize("name", list(PRESETS))
def test_parameter_count_matches_timm(name):
    ours = VisionTransformer(PRESETS[name])
    reference = models.create(name)
    assert measure.count_params(ours) == measure.count_params(reference)
    assert measure.vit_params(PRESETS[name])["total"] == measure.count_params(ours)


def test_vit_tiny_has_the_published_count():
    assert measure.count_params(VisionTransformer(PRESETS["vit_tiny_patch16_224"])) == 5_717_416


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
