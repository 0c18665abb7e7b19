import pytest
import torch

from vitsurvey import measure
from vitsurvey.models import ViTConfig, VisionTransformer, counts
from vitsurvey.strategies import pruning

CFG = ViTConfig(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=48, depth=3, num_heads=4)


def _model(seed=0):
    torch.manual_seed(seed)
    model = VisionTransformer(CFG).eval()
    with torch.no_grad():  # random biases too, so that zeroed structures really differ from untouched ones
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.7])
def test_structurally_pruned_equals_masked(ratio):
    model, x = _model(), torch.randn(4, 1, 28, 28)
    pruned, masked = pruning.prune_structured(model, ratio), pruning.mask_structured(model, ratio)
    with torch.no_grad():
        assert torch.allclose(pruned(x), masked(x), atol=1e-5)
        assert not torch.allclose(pruned(x), model(x), atol=1e-3)  # something was really removed
    assert counts.count_params(pruned) < counts.count_params(model)


def test_pruned_shapes_and_macs():
    pruned = pruning.prune_structured(_model(), 0.5)
    for block in pruned.blocks:
        assert block.attn.num_heads == 2 and block.attn.head_dim == 12
        assert block.mlp.fc1.out_features == 96
    counted = measure.count_macs(pruned, torch.zeros(1, 1, 28, 28)).total
    assert counted == counts.vit_macs(pruned)["total"] < counts.vit_macs(CFG)["total"]
    assert ViTConfig.of(pruned) is None  # the config no longer describes the blocks


def test_ratio_zero_is_identity_and_original_untouched():
    model, x = _model(), torch.randn(2, 1, 28, 28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    same = pruning.prune_structured(model, 0.0)
    pruning.prune_structured(model, 0.5)
    with torch.no_grad():
        assert torch.equal(same(x), model(x))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_least_important_heads_go_first():
    model = _model()
    with torch.no_grad():
        qkv = model.blocks[0].attn.qkv.weight.view(3, 4, 12, -1)
        qkv[:, 2] *= 0.01  # head 2 made tiny
    heads, _ = pruning.select_structures(model, 0.25)[0]
    assert 2 not in heads.tolist() and len(heads) == 3


def test_only_chosen_blocks_are_pruned():
    pruned = pruning.prune_structured(_model(), 0.5, blocks=[1])
    assert [b.attn.num_heads for b in pruned.blocks] == [4, 2, 4]


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1])
def test_invalid_ratios(ratio):
    with pytest.raises(ValueError, match="would remove every head|invalid"):
        pruning.prune_structured(_model(), ratio)


def test_ratio_removing_all_heads_of_a_small_block():
    two_heads = VisionTransformer(ViTConfig(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32,
                                            depth=1, num_heads=2))
    with pytest.raises(ValueError, match="would remove all 2 heads of block 0"):
        pruning.prune_structured(two_heads, 0.8)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_pruning_reaches_the_sparsity_and_keeps_shapes(scope):
    model = _model()
    shapes = {n: p.shape for n, p in model.named_parameters()}
    pruning.magnitude_prune(model, 0.6, scope=scope)
    assert pruning.sparsity_of(model) == pytest.approx(0.6, abs=0.01)
    pruning.make_permanent(model)
    assert {n: p.shape for n, p in model.named_parameters()} == shapes
    assert pruning.sparsity_of(model) == pytest.approx(0.6, abs=0.01)


def test_magnitude_pruning_removes_the_smallest_weights():
    model = _model()
    weights = torch.cat([m.weight.detach().abs().flatten() for m in pruning._block_linears(model)])
    threshold = weights.kthvalue(int(0.5 * weights.numel())).values
    pruning.magnitude_prune(model, 0.5)
    for m in pruning._block_linears(model):
        kept = m.weight.detach() != 0
        assert (m.weight_orig.detach().abs()[kept] >= threshold).all()


def test_masks_survive_fine_tuning():
    model = _model().train()
    pruning.magnitude_prune(model, 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randn(4, 1, 28, 28)).pow(2).mean()
    loss.backward()
    opt.step()
    assert pruning.sparsity_of(model) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_invalid_sparsity(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        pruning.magnitude_prune(_model(), bad)


def test_nonzero_params_counts_what_pruning_left():
    model = _model()
    total = counts.count_params(model)
    pruning.make_permanent(pruning.magnitude_prune(model, 0.5))
    block_weights = sum(m.weight.numel() for m in pruning._block_linears(model))
    assert pruning.nonzero_params(model) == total - round(0.5 * block_weights)
    assert pruning.nonzero_params is counts.nonzero_params  # one count, at home in models.counts


def test_removed_fraction_reports_whole_heads():
    from vitsurvey.models import ViTConfig, VisionTransformer

    vit = VisionTransformer(ViTConfig(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=48,
                                      depth=2, num_heads=3, mlp_ratio=2.0))
    assert pruning.removed_fraction(vit, pruning.prune_structured(vit, 0.2)) == pytest.approx(
        {"heads": 1 / 3, "neurons": 19 / 96})
    half_of_one_block = pruning.prune_structured(vit, 0.5, blocks=[0])
    assert pruning.removed_fraction(vit, half_of_one_block)["heads"] == pytest.approx(2 / 6)


def _masked_head_dims(model, ratio):
    """The original model with the channels and neurons prune_head_dims removes zeroed (its scaling untouched),
    chosen here from the scores written out again: ||W_q,j|| ||W_k,j|| and ||W_v,j|| ||W_o[:, j]||."""
    import copy
    import math

    masked = copy.deepcopy(model)
    with torch.no_grad():
        for block in masked.blocks:
            attn, h, d = block.attn, block.attn.num_heads, block.attn.head_dim
            drop = math.floor(d * ratio + 0.5)
            w, b = attn.qkv.weight.view(3, h, d, -1), attn.qkv.bias.view(3, h, d)
            o = attn.proj.weight.view(-1, h, d)
            for head in range(h):
                qk = [w[0, head, j].norm() * w[1, head, j].norm() for j in range(d)]
                vo = [w[2, head, j].norm() * o[:, head, j].norm() for j in range(d)]
                for j in sorted(range(d), key=lambda j: qk[j])[:drop]:
                    w[0, head, j] = 0
                    b[0, head, j] = 0  # q_j = 0 removes q_j k_j from every logit
                for j in sorted(range(d), key=lambda j: vo[j])[:drop]:
                    o[:, head, j] = 0  # value channel j no longer reaches the output
            m = block.mlp.fc1.out_features
            score = block.mlp.fc1.weight.norm(dim=1) * block.mlp.fc2.weight.norm(dim=0)
            gone = score.argsort()[: math.floor(m * ratio + 0.5)]
            block.mlp.fc2.weight[:, gone] = 0
    return masked


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.8])
def test_head_width_pruning_equals_the_model_with_those_channels_zeroed(ratio):
    model, x = _model(), torch.randn(4, 1, 28, 28)
    pruned = pruning.prune_head_dims(model, ratio)
    d = CFG.embed_dim // CFG.num_heads
    for block in pruned.blocks:
        assert block.attn.num_heads == CFG.num_heads  # every head kept
        assert block.attn.head_dim == d - round(d * ratio)
    with torch.no_grad():
        assert torch.allclose(pruned(x), _masked_head_dims(model, ratio)(x), atol=1e-5)
        assert not torch.allclose(pruned(x), model(x), atol=1e-3)
    counted = measure.count_macs(pruned, torch.zeros(1, 1, 28, 28)).total
    assert counted == counts.vit_macs(pruned)["total"] < counts.vit_macs(CFG)["total"]


def test_head_width_pruning_removes_the_weakest_channel_of_each_head():
    model = _model()
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.view(3, 4, 12, -1)[0, 1, 5] *= 1e-3  # head 1's query channel 5 made tiny
    qk, _ = pruning.head_dim_importance(model.blocks[0].attn)
    assert qk.shape == (4, 12) and int(qk[1].argmin()) == 5
    pruned = pruning.prune_head_dims(model, 1 / 12)  # one channel per head
    kept_q = pruned.blocks[0].attn.qkv.weight[11:22]  # head 1's 11 query rows, scaled by sqrt(11 / 12)
    original = model.blocks[0].attn.qkv.weight[12:24] * (11 / 12) ** 0.5
    assert torch.allclose(kept_q, torch.cat([original[:5], original[6:]]))


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_head_width_pruning_refuses_bad_ratios(bad):
    with pytest.raises(ValueError, match="ratio"):
        pruning.prune_head_dims(_model(), bad)
