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


def test_orthogonal_slots_are_summed_over_sqrt_n_and_hadamard_vectors_have_unit_norm():
    # DataMUX's code: random_ortho sums the N rotated sequences and divides by sqrt(N); gaussian_hadamard
    # multiplies by unit-norm Gaussian vectors and averages.
    mux = ImageMultiplexer(_vit(), n=4, transform="orthogonal", seed=2).eval()
    x = _images(4)
    with torch.no_grad():
        t = mux.vit.embed(x)  # (4, T, D)
        by_hand = sum(t[i] @ mux.mix[i].T for i in range(4)) / 2.0  # sqrt(4) = 2
        assert torch.allclose(mux.multiplex(x)[0], by_hand, atol=1e-5)
    had = ImageMultiplexer(_vit(), n=3, transform="hadamard", seed=2)
    assert torch.allclose(had.mix.norm(dim=1), torch.ones(3), atol=1e-6)


def test_the_transforms_follow_their_seed_and_not_torchs_generator():
    # the same seed seeds torch's generator for the initial weights: the transforms must not share its draws
    torch.manual_seed(0)
    a = ImageMultiplexer(VisionTransformer(CFG), 2, seed=5).mix
    torch.manual_seed(1)
    b = ImageMultiplexer(VisionTransformer(CFG), 2, seed=5).mix
    assert torch.equal(a, b)
    assert not torch.allclose(a, ImageMultiplexer(_vit(), 2, seed=6).mix)
    torch.manual_seed(0)
    vit = VisionTransformer(CFG)
    first = torch.randn(CFG.embed_dim, CFG.embed_dim, generator=torch.Generator().manual_seed(0))
    q = ImageMultiplexer(vit, 2, seed=0).mix[0]
    # under a shared stream, QR of torch's first draws with seed 0 would be slot 0's matrix
    assert not torch.allclose(torch.linalg.qr(first)[0].abs(), q.abs(), atol=1e-3)


def test_the_conv_tokeniser_replaces_the_patch_embedding_only():
    mux = ImageMultiplexer(_vit(), n=2, tokenizer="conv").eval()
    x = _images(2)
    with torch.no_grad():
        t = mux.tokens(x)
        patches = mux.stem(x).flatten(2).transpose(1, 2)
    assert t.shape == (2, CFG.num_tokens, 32)
    assert torch.allclose(t[:, 0], (mux.vit.cls_token + mux.vit.pos_embed[:, :1]).expand(2, 1, 32)[:, 0], atol=1e-6)
    assert torch.allclose(t[:, 1:], patches + mux.vit.pos_embed[:, 1:], atol=1e-6)
    # the stem's patches are 7 x 7 pixel blocks: changing one pixel in the top-left block, away from its border,
    # changes the first patch token only (the 3 x 3 convolution reaches one pixel over the block's edge)
    other = x.clone()
    other[0, 0, 3, 3] += 1.0
    with torch.no_grad():
        d = (mux.tokens(other) - t)[0].abs().sum(-1)
    assert d[1] > 0 and torch.all(d[2:] == 0) and d[0] == 0
    model = ImageMultiplexer(_vit(), 2, tokenizer="conv").train()
    nn.functional.cross_entropy(model(_images(2)), torch.tensor([0, 1])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.stem.parameters())
    assert model.vit.patch_embed.proj.weight.grad is None  # the linear patch embedding is not used


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_conv_tokeniser_macs_equal_fvcore(pool):
    cfg = CFG if pool == "token" else CFG.__class__(**{**CFG.__dict__, "class_token": False, "global_pool": "avg"})
    model = ImageMultiplexer(_vit(cfg), 2, tokenizer="conv")
    counted = measure.count_macs(model, _images(2)).total
    assert multiplex.macs_per_image(model)["total"] * 2 == pytest.approx(counted, abs=1e-6)
    # by hand: 28 x 28 pixels x 9 x 16 channels, then 16 patches x 16 channels x 49 x 32
    assert multiplex.macs_per_image(model)["patch_embed"] == 28 * 28 * 9 * 16 + 16 * 16 * 49 * 32


def _blocks_image(slot: int) -> torch.Tensor:
    """A 28 x 28 image whose 7 x 7 patch j (row-major) holds the value 10 slot + j everywhere."""
    values = 10.0 * slot + torch.arange(16, dtype=torch.float32).view(4, 4)
    return values.repeat_interleave(7, 0).repeat_interleave(7, 1)[None]


def test_retrieval_targets_the_drawn_slots_patch_at_each_position():
    mux = ImageMultiplexer(_vit(), n=2, retrieval=True).eval()
    head = mux.retrieval_head
    nn.init.zeros_(head.decoder.weight)
    nn.init.zeros_(head.decoder.bias)  # predicts 0 everywhere: the loss is the mean squared target
    x = torch.stack([_blocks_image(0), _blocks_image(1)] * 2)  # two groups, slot 0 then slot 1
    with torch.no_grad():
        tokens = mux.backbone(x)
        loss = mux.retrieval_loss(x, tokens, generator=torch.Generator().manual_seed(3))
    slot = torch.randint(2, (2, 16), generator=torch.Generator().manual_seed(3)).float()
    target = 10 * slot + torch.arange(16.0)  # every pixel of the patch holds this value
    assert loss.item() == pytest.approx((target**2).mean().item(), rel=1e-6)
    nn.init.constant_(head.decoder.bias, 5.0)
    with torch.no_grad():
        loss = mux.retrieval_loss(x, tokens, generator=torch.Generator().manual_seed(3))
    assert loss.item() == pytest.approx(((target - 5) ** 2).mean().item(), rel=1e-6)


def test_retrieval_objective_warms_up_on_retrieval_then_weights_task_and_retrieval():
    torch.manual_seed(0)
    mux = ImageMultiplexer(_vit(), n=2, retrieval=True).train()
    x, y = _images(4), torch.tensor([0, 1, 2, 3])
    objective = multiplex.RetrievalObjective(warmup_steps=1)
    out = mux(x)
    assert isinstance(out, tuple) and out[0].shape == (4, 10) and out[1].shape == (2, CFG.num_tokens, 32)
    torch.manual_seed(7)
    warm = objective(mux, x, y, out)
    torch.manual_seed(7)
    assert warm.item() == pytest.approx(mux.retrieval_loss(x, out[1]).item())  # step 0: retrieval only
    torch.manual_seed(7)
    after = objective(mux, x, y, out)
    torch.manual_seed(7)
    task = nn.functional.cross_entropy(out[0], y, label_smoothing=0.1)
    expected = 0.9 * task + 0.1 * mux.retrieval_loss(x, out[1])
    assert after.item() == pytest.approx(expected.item(), rel=1e-6)
    assert objective.step == 2
    mux.eval()
    assert isinstance(mux(x), torch.Tensor)  # evaluation sees logits only
    with pytest.raises(TypeError, match="retrieval=True"):
        objective(ImageMultiplexer(_vit(), 2), x, y, mux(x))
    with pytest.raises(ValueError, match="warmup_steps must be a whole number of at least 0"):
        multiplex.RetrievalObjective(-1)
    with pytest.raises(ValueError, match="retrieval_coeff must be a number >= 0"):
        multiplex.RetrievalObjective(1, retrieval_coeff=float("nan"))
    with pytest.raises(ValueError, match="no retrieval head"):
        ImageMultiplexer(_vit(), 2).retrieval_loss(x, out[1])
    with pytest.raises(ValueError, match="Unknown tokenizer 'dvae'"):
        ImageMultiplexer(_vit(), 2, tokenizer="dvae")


@pytest.mark.parametrize("kind", multiplex.TRANSFORMS)
def test_no_slot_position_is_special_permuting_slots_permutes_the_outputs(kind):
    # the code treats slot i only through its transform and its demultiplexer: moving the images, the transforms
    # and the demultiplexers by the same permutation moves the logits by it and changes nothing else
    mux = ImageMultiplexer(_vit(), n=4, transform=kind, seed=1).eval()
    x = _images(8)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        before = mux(x).view(2, 4, -1)
        mux.mix.copy_(mux.mix[perm])
        mux.demux = nn.ModuleList(mux.demux[i] for i in perm.tolist())
        after = mux(x.view(2, 4, 1, 28, 28)[:, perm].reshape(8, 1, 28, 28)).view(2, 4, -1)
    assert torch.allclose(after, before[:, perm], atol=1e-5)
    assert not torch.allclose(before[:, 0], before[:, 1], atol=1e-3)  # the slots' outputs do differ
