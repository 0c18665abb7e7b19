import pytest
import torch
from torch import nn

from vitsurvey import measure, models
from vitsurvey.models import ViTConfig, VisionTransformer
from vitsurvey.strategies import multiplex
from vitsurvey.strategies.multiplex import ConcatPlexer, ImageMultiplexer

CFG = ViTConfig(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2)


def _vit(cfg: ViTConfig = CFG) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(cfg).eval()


def _images(b: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_concatplexer_with_one_slot_is_a_vit_over_the_abstract_tokens():
    plexer = ConcatPlexer(_vit(), n=1, k=4).eval()
    x = _images(3)
    with torch.no_grad():
        z = plexer.patchify(x)
        assert z.shape == (3, 4, 32) and plexer.slot_embed is None
        h = z
        for block in plexer.vit.blocks:
            h, _ = block(h)
        expected = plexer.vit.head(plexer.vit.fc_norm(plexer.vit.norm(h).mean(1)))
        assert torch.allclose(plexer(x), expected, atol=1e-6)


def test_each_slot_enters_the_backbone_with_its_own_image_only():
    plexer = ConcatPlexer(_vit(), n=3, k=4).eval()
    x = _images(6)
    changed = x.clone()
    changed[1] = torch.randn(1, 28, 28)  # image 1 of the first group
    with torch.no_grad():
        a, b = plexer.concatenate(x), plexer.concatenate(changed)
    assert a.shape == (2, 12, 32)
    assert torch.equal(a[0, :4], b[0, :4]) and torch.equal(a[0, 8:], b[0, 8:])  # slots 0 and 2 untouched
    assert not torch.allclose(a[0, 4:8], b[0, 4:8])
    assert torch.equal(a[1], b[1])  # the other group too
    with torch.no_grad():  # after the backbone, attention mixes the slots: that is the point
        assert not torch.allclose(plexer(x)[0], plexer(changed)[0])


def test_image_multiplexer_transforms_are_fixed_and_slot_specific():
    for kind in multiplex.TRANSFORMS:
        mux = ImageMultiplexer(_vit(), n=4, transform=kind, seed=3)
        assert "mix" in dict(mux.named_buffers()) and "mix" not in dict(mux.named_parameters())
        assert not torch.allclose(mux.mix[0], mux.mix[1])
        again = ImageMultiplexer(_vit(), n=4, transform=kind, seed=3)
        assert torch.equal(mux.mix, again.mix)  # seeded: the same transforms every time
    q = ImageMultiplexer(_vit(), n=2, transform="orthogonal").mix
    eye = torch.eye(32).expand(2, 32, 32)
    assert torch.allclose(q @ q.transpose(1, 2), eye, atol=1e-5)
    # one slot's image changes the group's input by exactly its transformed tokens / n
    mux = ImageMultiplexer(_vit(), n=2, transform="hadamard").eval()
    x = _images(2)
    other = x.clone()
    other[1] = 0
    with torch.no_grad():
        delta = mux.multiplex(x) - mux.multiplex(other)
        expected = (mux.vit.embed(x[1:]) - mux.vit.embed(other[1:])) * mux.mix[1] / 2
    assert torch.allclose(delta, expected, atol=1e-6)


@pytest.mark.parametrize("make", [lambda v: ImageMultiplexer(v, 4), lambda v: ConcatPlexer(v, 4, 4)])
def test_a_batch_that_is_not_a_multiple_of_n_is_padded_with_blank_images(make):
    model = make(_vit()).eval()
    x = _images(5)
    with torch.no_grad():
        out = model(x)
        padded = model(torch.cat([x, torch.zeros(3, 1, 28, 28)]))
    assert out.shape == (5, 10)
    assert torch.allclose(out, padded[:5], atol=1e-6)


@pytest.mark.parametrize("pool", ["token", "avg"])
@pytest.mark.parametrize(
    "make",
    [lambda v: ImageMultiplexer(v, 2, "orthogonal"), lambda v: ImageMultiplexer(v, 4, "hadamard"),
     lambda v: ConcatPlexer(v, 2, 4), lambda v: ConcatPlexer(v, 4, 1, patchifier_depth=2), lambda v: v],
)
def test_analytic_macs_per_image_equal_fvcore(pool, make):
    cfg = CFG if pool == "token" else CFG.__class__(**{**CFG.__dict__, "class_token": False, "global_pool": "avg"})
    model = make(_vit(cfg))
    n = getattr(model, "n", 1)
    counted = measure.count_macs(model, _images(n)).total
    assert multiplex.macs_per_image(model)["total"] * n == pytest.approx(counted, abs=1e-6)


def test_multiplexing_cuts_the_backbone_share_per_image():
    vit = _vit()
    plain = multiplex.macs_per_image(vit)
    mux = [multiplex.macs_per_image(ImageMultiplexer(vit, n)) for n in (2, 4)]
    assert plain["backbone"] / 2 == pytest.approx(mux[0]["backbone"])
    assert plain["backbone"] / 4 == pytest.approx(mux[1]["backbone"])


def test_training_reaches_the_new_layers_and_not_the_fixed_transforms():
    for model in (ImageMultiplexer(_vit(), 2), ConcatPlexer(_vit(), 2, 4)):
        model.train()
        loss = nn.functional.cross_entropy(model(_images(4)), torch.tensor([0, 1, 2, 3]))
        loss.backward()
        new = model.demux if isinstance(model, ImageMultiplexer) else model.cmux
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in new.parameters())
        assert model.vit.blocks[0].attn.qkv.weight.grad is not None


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="n must be a whole number of at least 1"):
        ImageMultiplexer(_vit(), 0)
    with pytest.raises(ValueError, match="n must be a whole number of at least 1"):
        ConcatPlexer(_vit(), -1, 4)
    with pytest.raises(ValueError, match="k must be a whole number of at least 1"):
        ConcatPlexer(_vit(), 2, 0)
    with pytest.raises(ValueError, match="k=2 abstract tokens cannot be cut from a 4 x 4 patch grid.*1, 4, 16"):
        ConcatPlexer(_vit(), 2, 2)
    with pytest.raises(ValueError, match="Unknown transform 'fourier'"):
        ImageMultiplexer(_vit(), 2, transform="fourier")
    with pytest.raises(TypeError, match="wraps vitsurvey's VisionTransformer"):
        ImageMultiplexer(models.timm_vit(CFG), 2)
    with pytest.raises(ValueError, match="softmax attention"):
        ConcatPlexer(_vit(CFG.with_mixer("pool")), 2, 4)
    with pytest.raises(ValueError, match=r"batch of images \(B, C, H, W\)"):
        ImageMultiplexer(_vit(), 2)(torch.zeros(2, 784))
    with pytest.raises(TypeError, match="No multiplexing MAC formula for Linear"):
        multiplex.macs_per_image(nn.Linear(2, 2))


def test_pooled_output_is_what_the_head_or_the_demultiplexer_reads():
    vit = _vit()
    x = _images(4)
    with torch.no_grad():
        assert torch.allclose(vit.head(vit.fc_norm(multiplex.pooled_output(vit, x))), vit(x), atol=1e-6)
        mux = ImageMultiplexer(vit, 2).eval()
        pooled = multiplex.pooled_output(mux, x)
        assert pooled.shape == (2, 32)  # one vector per group of two images
        slots = torch.stack([d(pooled) for d in mux.demux], 1)
        assert torch.allclose(vit.head(vit.fc_norm(slots)).flatten(0, 1), mux(x), atol=1e-6)
    with pytest.raises(TypeError, match="pooled_output reads"):
        multiplex.pooled_output(ConcatPlexer(vit, 2, 4), x)


def test_method_of_names_the_method_as_results_rows_spell_it():
    vit = _vit()
    assert multiplex.method_of(vit) == {"method": "ViT", "n": 1, "k": None}
    assert multiplex.method_of(ImageMultiplexer(vit, 2, "hadamard")) == {
        "method": "Image Multiplexer (hadamard)", "n": 2, "k": None}
    assert multiplex.method_of(ConcatPlexer(vit, 4, 4)) == {"method": "ConcatPlexer", "n": 4, "k": 4}
