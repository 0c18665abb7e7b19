import pytest
import torch

from vitsurvey import measure
from vitsurvey.models import ViTConfig, VisionTransformer, counts
from vitsurvey.strategies import tokens

CFG = ViTConfig(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=48, depth=4, num_heads=3)


def _model():
    torch.manual_seed(0)
    return VisionTransformer(CFG).eval()


X = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_evit_keep_one_is_the_unreduced_model():
    model = _model()
    with torch.no_grad():
        assert torch.equal(tokens.EViT(model, 1.0, [0, 1, 2])(X), model(X))


@pytest.mark.parametrize("fuse", [True, False])
def test_evit_token_counts_match_the_schedule(fuse):
    model = _model()
    evit = tokens.EViT(model, 0.5, [1, 2], fuse=fuse)
    seen = []
    hooks = [b.attn.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1])) for b in model.blocks]
    hooks += [b.mlp.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1])) for b in model.blocks]
    with torch.no_grad():
        evit(X)
    for h in hooks:
        h.remove()
    pairs = [(seen[2 * i], seen[2 * i + 1]) for i in range(CFG.depth)]  # each block: attention, then MLP
    assert pairs == evit.token_counts() == tokens.evit_schedule(CFG.depth, 0.5, [1, 2], CFG.num_tokens, fuse=fuse)
    # 49 image tokens: block 1 keeps ceil(0.5 * 49) = 25 (+ a fused one); block 2 keeps ceil(0.5 * 26) = 13 (+ 1)
    assert pairs == ([(50, 50), (50, 27), (27, 15), (15, 15)] if fuse else [(50, 50), (50, 26), (26, 14), (14, 14)])


def test_evit_keeps_the_most_attended_tokens_and_fuses_the_rest_by_their_attention_sum():
    x = torch.randn(2, 6, 4)
    attn = torch.zeros(2, 1, 6, 6)
    attn[:, 0, 0, 1:] = torch.tensor([0.1, 0.5, 0.05, 0.3, 0.05])
    evit = tokens.EViT(_model(), 0.4, [0], fuse=False)  # keep ceil(0.4 * 5) = 2 of the 5 image tokens
    out, _ = evit._reduce(x, attn, None)
    assert torch.equal(out[:, 0], x[:, 0])
    assert torch.equal(out[:, 1:], x[:, [2, 4]])  # tokens 2 and 4 have the highest attention, most attended first
    evit.fuse = True
    fused, _ = evit._reduce(x, attn, None)
    expected = 0.1 * x[:, 1] + 0.05 * x[:, 3] + 0.05 * x[:, 5]  # sum_i a_i x_i, not divided by sum_i a_i
    assert torch.allclose(fused[:, -1], expected, atol=1e-6) and fused.shape[1] == 4


def test_evit_reduces_between_attention_and_mlp():
    model = _model()
    evit = tokens.EViT(model, 0.25, [0])
    with torch.no_grad():  # by hand: block 0's attention and residual, the reduction, then its MLP, then the rest
        x = model.embed(X)
        block = model.blocks[0]
        y, attn = block.attn(block.norm1(x), True)
        x = x + y
        score = attn[:, :, 0, 1:].mean(1)
        n_keep = 13  # ceil(0.25 * 49)
        order = score.argsort(1, descending=True)
        top, rest = order[:, :n_keep], order[:, n_keep:]
        img = x[:, 1:]
        kept = torch.stack([img[b, top[b]] for b in range(len(x))])
        fused = torch.stack([(score[b, rest[b], None] * img[b, rest[b]]).sum(0) for b in range(len(x))])
        x = torch.cat([x[:, :1], kept, fused[:, None]], dim=1)
        x = x + block.mlp(block.norm2(x))
        for later in model.blocks[1:]:
            x = later(x)[0]
        torch.testing.assert_close(evit.forward_features(X), model.norm(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("keep", [0.0, -0.5, 1.5])
def test_invalid_keep_rates(keep):
    with pytest.raises(ValueError, match=r"keep rate must be in \(0, 1\]"):
        tokens.EViT(_model(), keep, [0])


def test_evit_macs_formula_matches_fvcore():
    evit = tokens.EViT(_model(), 0.5, [1, 2])
    pairs = evit.token_counts()
    counted = measure.count_macs(evit, X[:1]).total
    formula = counts.vit_macs(evit.vit, tokens=[a for a, _ in pairs], mlp_tokens=[m for _, m in pairs])["total"]
    # fvcore also counts the few multiplications of the fusion; the formula leaves them out
    assert abs(counted - formula) / counted < 0.01


@pytest.mark.parametrize("fuse", [True, False])
def test_evit_sources(fuse):
    evit = tokens.EViT(_model(), 0.5, [1], fuse=fuse)
    last = evit.sources(X)
    assert last.shape[1] == evit.token_counts()[-1][1]
    assert (last.sum(1) <= 1).all()  # no input token in two tokens
    assert bool((last.sum(1) == 1).all()) == fuse  # with fusion nothing is lost; without, dropped tokens are gone
    assert last[:, 0, 0].all() and (last[:, 0].sum(-1) == 1).all()


def test_tome_r_zero_is_the_unreduced_model():
    model = _model()
    with torch.no_grad():
        assert torch.equal(tokens.ToMe(model, 0)(X), model(X))


def test_tome_merges_r_tokens_per_block():
    model = _model()
    tome = tokens.ToMe(model, 8)
    seen = []
    hooks = [b.norm1.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1])) for b in model.blocks]
    with torch.no_grad():
        out = tome(X)
    for h in hooks:
        h.remove()
    assert seen == tome.token_counts() == [50, 42, 34, 26]
    assert out.shape == (3, 10)


def test_bipartite_merge_conserves_size_and_keeps_the_class_token():
    x = torch.randn(2, 9, 4)
    size = torch.ones(2, 9, 1)
    merged, new_size = tokens.bipartite_merge(x, x, size, 3)
    assert merged.shape == (2, 6, 4)
    assert torch.equal(new_size.sum(1), size.sum(1))
    assert torch.allclose(merged[:, 0], x[:, 0])
    # the size-weighted mean of the merged tokens is the mean of the originals
    assert torch.allclose((merged * new_size).sum(1), x.sum(1), atol=1e-5)


def test_tome_rejects_too_large_r():
    with pytest.raises(ValueError, match="merges more tokens than block"):
        tokens.ToMe(_model(), 20)
    with pytest.raises(ValueError, match=">= 0"):
        tokens.ToMe(_model(), -1)


def test_patch_slimming_sets_are_nested_and_keep_the_class_token():
    model = _model()
    slimmed, result = tokens.patch_slimming(model, X, tolerance=0.3, r0=4)
    keep = result.keep
    assert torch.equal(keep[0], torch.arange(CFG.num_tokens))
    for a, b in zip(keep, keep[1:]):
        assert set(b.tolist()) <= set(a.tolist())
    assert all(0 in k.tolist() for k in keep)
    assert result.token_counts() == [len(k) for k in keep]
    assert result.token_counts()[-1] < CFG.num_tokens  # something was slimmed
    assert all(e <= 0.3 + 1e-6 for e in result.errors[:1])
    # the token step applies exactly the keep sets
    with torch.no_grad():
        via_step = slimmed(X, token_step=result.token_step())
        direct, _, _ = tokens._run(slimmed, keep, X)
    assert torch.allclose(via_step, direct, atol=1e-5)
    assert slimmed.token_counts(X, result.token_step()) == result.token_counts()


def test_patch_slimming_with_a_tiny_tolerance_keeps_everything():
    model = _model()
    slimmed, result = tokens.patch_slimming(model, X, tolerance=1e-7, r0=8)
    assert result.token_counts() == [CFG.num_tokens] * CFG.depth
    with torch.no_grad():
        assert torch.allclose(slimmed(X, token_step=result.token_step()), model(X), atol=1e-5)


def test_patch_slimming_fine_tune_reduces_the_error_and_leaves_the_original():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, plain = tokens.patch_slimming(model, X, tolerance=0.5, r0=8)
    _, tuned = tokens.patch_slimming(model, X, tolerance=0.5, r0=8, finetune_steps=20, lr=1e-3)
    assert tuned.errors[0] <= plain.errors[0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kw,match", [({"tolerance": 0.0}, "tolerance"), ({"tolerance": 0.1, "r0": 0}, "r0")])
def test_patch_slimming_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        tokens.patch_slimming(_model(), X, **kw)


def test_schedule_step_and_wrapper():
    model = _model()
    step = tokens.schedule_step([50, 40, 20, 10])
    assert model.token_counts(X, step) == [50, 40, 20, 10]
    with torch.no_grad():
        assert torch.equal(tokens.WithTokenStep(model, step)(X), model(X, token_step=step))
    with pytest.raises(ValueError, match="non-increasing"):
        tokens.schedule_step([50, 60, 20, 10])


def test_tome_per_block_schedule():
    model = _model()
    schedule = tokens.tome_schedule(13, CFG.depth)
    assert schedule == [4, 3, 3, 3] and sum(schedule) == 13
    tome = tokens.ToMe(model, schedule)
    assert tome.token_counts() == [50, 46, 43, 40]
    with torch.no_grad():
        assert tome(X).shape == (3, 10)
    with pytest.raises(ValueError, match="one per block"):
        tokens.ToMe(model, [1, 2])


@pytest.mark.parametrize("r", [1, [3, 0, 2, 1], [0, 0, 0, 4]])
def test_tome_macs_formula_equals_fvcore_exactly(r):
    # the MLP runs on the merged tokens, and the bipartite matching costs MACs of its own
    vit = VisionTransformer(ViTConfig(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=3)).eval()
    tome = tokens.ToMe(vit, r)
    formula = counts.vit_macs(vit, tokens=tome.token_counts(), merges=tome.schedule)
    assert measure.count_macs(tome, torch.zeros(1, 3, 32, 32)).total == formula["total"]
    assert formula["token_matching"] > 0
    # without the merges the count is too high: every block's MLP would see the unmerged tokens
    assert counts.vit_macs(vit, tokens=tome.token_counts())["total"] > formula["total"]


def test_vit_macs_refuses_impossible_merges():
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)  # 17 tokens
    with pytest.raises(ValueError, match="ToMe can merge 0 to 8"):
        counts.vit_macs(cfg, merges=[9, 0])
    with pytest.raises(ValueError, match="one count per block"):
        counts.vit_macs(cfg, merges=[1])


def test_tome_sources_partition_the_input_tokens():
    tome = tokens.ToMe(_model(), [2, 2, 1, 1])
    groups = tome.sources(X)
    assert groups.shape == (3, CFG.num_tokens - 6, CFG.num_tokens)
    assert (groups.sum(1) == 1).all()  # every input token in exactly one group
    assert groups[:, 0, 0].all() and (groups[:, 0].sum(-1) == 1).all()  # the class token is never merged
    with torch.no_grad():
        assert torch.equal(tome(X), tome.vit.forward_head(tome._run(X, track=True)[0]))


def test_step_sources_follow_a_token_schedule():
    model = _model()
    step = tokens.schedule_step([50, 50, 30, 30])  # keep the first 30 tokens after block 1
    after = tokens.step_sources(model, X, step)
    assert [m.shape[1] for m in after] == [50, 30, 30, 30]
    last = after[-1]
    assert (last.sum(1) <= 1).all() and last[:, 0, 0].all()
    assert torch.equal(last[0], torch.eye(50, dtype=torch.bool)[:30])  # each kept token is itself
