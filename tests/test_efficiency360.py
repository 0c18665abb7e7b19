import math

import pandas as pd
import pytest
import torch
from torch import nn

from vitsurvey import data
from vitsurvey import efficiency360 as e360

INFO = data.DATASETS["fashion_mnist"]


def _images(n: int, seed: int = 0) -> torch.Tensor:
    pixels = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    return (pixels - INFO.mean[0]) / INFO.std[0]


class _MeanBrightness(nn.Module):
    """Class = how bright the image is, in ten steps: a model with a known, input-dependent answer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = (x * INFO.std[0] + INFO.mean[0]).mean((1, 2, 3))
        centres = torch.linspace(0.45, 0.55, 10)
        return -((level[:, None] - centres[None]) ** 2) * 1e4


def test_severity_zero_is_the_clean_image_and_clean_accuracy():
    x = _images(32)
    y = _MeanBrightness()(x).argmax(-1)
    for name in e360.CORRUPTIONS:
        assert torch.equal(e360.corrupt(x, INFO, name, 0), x)
    table = e360.corruption_accuracy(_MeanBrightness(), x, y, INFO, severities=(0, 3))
    assert (table[table["severity"] == 0]["top1"] == 100.0).all()
    assert set(table["corruption"]) == set(e360.CORRUPTIONS) and (table["n"] == 32).all()


def test_corruptions_grow_with_severity_and_stay_valid_pixels():
    x = _images(16)
    for name in e360.CORRUPTIONS:
        diffs = []
        for s in e360.SEVERITIES:
            out = e360.corrupt(x, INFO, name, s)
            pixels = out * INFO.std[0] + INFO.mean[0]
            assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5, name
            diffs.append((out - x).abs().mean().item())
        assert diffs[-1] > diffs[0], name
    assert torch.equal(e360.corrupt(x, INFO, "gaussian noise", 2, seed=1), e360.corrupt(x, INFO, "gaussian noise", 2, seed=1))


def test_corruption_error_is_one_against_itself():
    table = pd.DataFrame({"corruption": ["a"] * 3 + ["b"] * 3, "severity": [0, 1, 2] * 2,
                          "top1": [90, 80, 70, 90, 60, 50], "n": 10})
    ce = e360.corruption_error(table, table).set_index("corruption")["ce"]
    assert ce.tolist() == [1.0, 1.0, 1.0]
    better = table.assign(top1=table["top1"] + 5)
    assert e360.corruption_error(better, table).set_index("corruption").loc["a", "ce"] == pytest.approx(40 / 50)


def test_bad_robustness_inputs_are_clear_errors():
    x = _images(4)
    for bad in (-1, 6, 2.5, True):
        with pytest.raises(ValueError, match="severity must be a whole number from 0"):
            e360.corrupt(x, INFO, "contrast", bad)
    with pytest.raises(ValueError, match="Unknown corruption 'fog'"):
        e360.corrupt(x, INFO, "fog", 1)
    with pytest.raises(ValueError, match="epsilon is a perturbation size"):
        e360.perturb(_MeanBrightness(), x, torch.zeros(4, dtype=torch.long), INFO, -0.1)
    with pytest.raises(ValueError, match="Unknown attack 'cw'"):
        e360.perturb(_MeanBrightness(), x, torch.zeros(4, dtype=torch.long), INFO, 0.1, attack="cw")
    with pytest.raises(ValueError, match="one label per image"):
        e360.corruption_accuracy(_MeanBrightness(), x, torch.zeros(3, dtype=torch.long), INFO)


def test_attacks_stay_in_the_ball_and_hurt_a_linear_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    x = _images(64)
    y = model(x).argmax(-1)  # the model is right on every clean image
    for attack in ("fgsm", "pgd"):
        adv = e360.perturb(model, x, y, INFO, 0.05, attack)
        moved = ((adv - x) * INFO.std[0]).abs().max().item()
        assert moved <= 0.05 + 1e-5
        assert (model(adv).argmax(-1) == y).float().mean() < 1.0
    table = e360.adversarial_accuracy(model, x, y, INFO, (0.0, 0.05), attacks=("fgsm",))
    assert table["top1"].tolist()[0] == 100.0 and table["top1"].tolist()[1] < 100.0


def test_a_calibrated_predictor_has_ece_near_zero_and_an_overconfident_one_does_not():
    g = torch.Generator().manual_seed(0)
    n, k = 20_000, 4
    probs = torch.softmax(torch.randn(n, k, generator=g) * 2, -1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)  # labels drawn from the stated probabilities
    calibrated = e360.calibration(probs.log(), labels)
    assert calibrated["ece"] < 0.02
    overconfident = e360.calibration(probs.log() * 4, labels)
    assert overconfident["ece"] > 0.1
    assert e360.fit_temperature(probs.log() * 4, labels) == pytest.approx(4.0, rel=0.1)
    table = e360.reliability(probs.log(), labels)
    ece = ((table["accuracy"] - table["confidence"]).abs() * table["count"]).sum() / n
    assert ece == pytest.approx(calibrated["ece"], abs=1e-4) and table["count"].sum() == n


def test_per_class_accuracies_average_to_overall_on_a_balanced_set():
    labels = torch.arange(10).repeat(20)
    preds = labels.clone()
    preds[::7] = (preds[::7] + 1) % 10
    table = e360.per_class_accuracy(labels, preds)
    overall = 100.0 * (preds == labels).float().mean().item()
    assert table["accuracy"].mean() == pytest.approx(overall) and (table["n"] == 20).all()
    summary = e360.fairness_summary(table)
    assert summary["class gap"] == summary["best class accuracy"] - summary["worst class accuracy"]
    with pytest.raises(ValueError, match="No images of class"):
        e360.per_class_accuracy(labels[labels != 3], preds[labels != 3], [str(c) for c in range(10)])


def test_membership_auc_is_a_coin_flip_for_unseen_images_of_one_distribution():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    a, b = _images(2000, seed=1), _images(2000, seed=2)
    ya, yb = torch.randint(0, 10, (2000,)), torch.randint(0, 10, (2000,))
    auc = e360.membership_auc(model, (a, ya), (b, yb))
    assert abs(auc - 0.5) < 0.05
    # members labelled with the model's own answers (loss below log 10) against non-members labelled with its
    # least likely class (loss above log 10): told apart perfectly
    with torch.no_grad():
        auc_seen = e360.membership_auc(model, (a, model(a).argmax(-1)), (b, model(b).argmin(-1)))
    assert auc_seen == 1.0
    with pytest.raises(ValueError, match="non_members is empty"):
        e360.membership_auc(model, (a, ya), (a[:0], ya[:0]))
    assert not math.isnan(auc)


def _tiny_vit():
    from vitsurvey.models import ViTConfig, VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(ViTConfig(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=2,
                                       num_heads=2)).eval()


def test_rollout_is_a_distribution_over_tokens_and_uniform_attention_spreads_evenly():
    vit = _tiny_vit()
    x = _images(3)
    r = e360.attention_rollout(vit, x)
    assert r.shape == (3, 16) and (r > 0).all() and (r.sum(-1) < 1).all()  # the rest stays on the class token
    for block in vit.blocks:  # queries and keys of zero: every attention row uniform
        block.attn.qkv.weight.data[: 2 * 32] = 0
        block.attn.qkv.bias.data[: 2 * 32] = 0
    flat = e360.attention_rollout(vit, x)
    assert torch.allclose(flat, flat[:, :1].expand_as(flat), atol=1e-6)
    with pytest.raises(ValueError, match="softmax attention"):
        from vitsurvey.models import VisionTransformer

        e360.attention_rollout(VisionTransformer(vit.cfg.with_mixer("pool")), x)


def test_deletion_follows_the_relevance_order():
    class CentreOnly(nn.Module):  # its answer depends only on the four centre patches
        def forward(self, x):
            centre = x[:, :, 7:21, 7:21].mean((1, 2, 3))
            return torch.stack([centre * 10, -centre * 10], 1)

    x = _images(8).abs() + 0.5
    relevance = torch.zeros(8, 16)
    relevance[:, [5, 6, 9, 10]] = 1.0  # the centre patches first
    right = e360.deletion_curve(CentreOnly(), x, relevance, 7, fractions=(0, 0.25, 1))
    wrong = e360.deletion_curve(CentreOnly(), x, -relevance, 7, fractions=(0, 0.25, 1))
    assert right["probability"].iloc[1] == pytest.approx(0.5) and wrong["probability"].iloc[1] > 0.99
    assert e360.curve_area(right) < e360.curve_area(wrong)
    with pytest.raises(ValueError, match="do not tile"):
        e360.deletion_curve(CentreOnly(), x, relevance[:, :15], 7)
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        e360.deletion_curve(CentreOnly(), x, relevance, 7, fractions=(0, 1.5))


def test_who_can_run_reports_one_thread_costs_and_restores_threads():
    vit = _tiny_vit()
    before = torch.get_num_threads()
    out = e360.who_can_run(vit, (1, 28, 28), iters=2)
    assert torch.get_num_threads() == before
    assert out["latency_1_thread_ms"] > 0 and out["memory_bytes"] > 0 and out["size_bytes"] > 4 * sum(
        p.numel() for p in vit.parameters())


def test_auc_se_shrinks_with_more_samples():
    assert e360.auc_se(0.5, 100, 100) > e360.auc_se(0.5, 10_000, 10_000) > 0
    with pytest.raises(ValueError, match="positives and negatives"):
        e360.auc_se(0.5, 0, 10)


def test_card_has_every_dimension_once_measured():
    vit = _tiny_vit()
    x, y = _images(64, seed=3), torch.arange(10).repeat(7)[:64]
    members = (_images(64, seed=4), torch.arange(10).repeat(7)[:64])
    table = e360.card(vit, (x, y), members, INFO, resamples=10)
    assert {"accuracy", "robustness", "probabilistic", "fairness", "privacy", "inclusiveness", "transparency"} == set(
        table["dimension"])  # spectral complexity is unidentifiable for a ViT: see the LayerNorm test
    assert table["value"].notna().all() and set(table["better"]) == {"higher", "lower"}
    top1 = table.loc[table["quantity"] == "top-1 (%)", "value"].item()
    assert top1 == pytest.approx(100.0 * (vit(x).argmax(-1) == y).float().mean().item())


def test_continual_summary_follows_its_definition():
    table = pd.DataFrame({"after task": [1, 2, 2, 3, 3, 3], "task": [1, 1, 2, 1, 2, 3],
                          "top1": [90.0, 60.0, 80.0, 30.0, 50.0, 70.0]})
    out = e360.continual_summary(table)
    assert out["average accuracy"] == pytest.approx(50.0)
    assert out["forgetting"] == pytest.approx(((90 - 30) + (80 - 50)) / 2)


def test_class_incremental_trains_task_by_task_and_replay_keeps_old_classes():
    from vitsurvey import profiles

    templates = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def make(n, seed):  # faint class patterns under strong noise: classes overlap, so forgetting shows
        y = torch.arange(4).repeat(n // 4)
        return 0.1 * templates[y] + torch.randn(len(y), 1, 28, 28, generator=torch.Generator().manual_seed(seed)), y

    train_set, test_set = make(800, 1), make(400, 2)
    prof = profiles.get_profile("smoke", resolve_data=False).replace(epochs=3, batch_size=32, augment=False, lr=3e-3)

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 4))

    naive = e360.class_incremental(build, train_set, test_set, prof, tasks=2)
    assert list(zip(naive["after task"], naive["task"])) == [(1, 1), (2, 1), (2, 2)]
    assert naive["n"].iloc[1] + naive["n"].iloc[2] == 400
    replay = e360.class_incremental(build, train_set, test_set, prof, tasks=2, replay_per_class=50)
    assert e360.continual_summary(naive)["forgetting"] > e360.continual_summary(replay)["forgetting"] >= 0
    for bad in (1, 5):
        with pytest.raises(ValueError, match="tasks must be a whole number from 2 to the number of classes"):
            e360.class_incremental(build, train_set, test_set, prof, tasks=bad)
    with pytest.raises(ValueError, match="replay_per_class cannot be negative"):
        e360.class_incremental(build, train_set, test_set, prof, replay_per_class=-1, tasks=2)


def test_card_with_a_reference_and_macs_adds_approximation_and_complexity_rows():
    vit = _tiny_vit()
    x, y = _images(64, seed=3), torch.arange(10).repeat(7)[:64]
    members = (_images(64, seed=4), y)
    table = e360.card(vit, (x, y), members, INFO, resamples=10, reference=vit, macs=1234.0)
    assert {"approximation", "computational complexity"} <= set(table["dimension"])
    assert "spectral complexity" not in set(table["dimension"])
    by = table.set_index("quantity")["value"]
    assert by["top-1 agreement with the reference (%)"] == 100.0
    assert by["KL divergence from the reference (nats)"] == pytest.approx(0.0, abs=1e-6)
    assert by["MACs per image"] == 1234.0
    assert by["rollout correlation with the reference"] == pytest.approx(1.0)
    assert by["deletion area, rollout order / random order"] > 0
    plain = e360.card(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), (x, y), members, INFO, resamples=10)
    assert "transparency" not in set(plain["dimension"])  # rollout needs a ViT with a class token


def test_rollout_agreement_is_one_with_itself_and_needs_the_same_patches():
    from vitsurvey.models import ViTConfig, VisionTransformer

    vit, x = _tiny_vit(), _images(8, seed=6)
    same = e360.rollout_agreement(vit, vit, x)
    assert same["correlation"] == pytest.approx(1.0) and same["se"] == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(1)
    other = VisionTransformer(ViTConfig(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=2,
                                        num_heads=2)).eval()
    assert -1 <= e360.rollout_agreement(other, vit, x)["correlation"] < 1
    coarse = VisionTransformer(ViTConfig(img_size=28, patch_size=14, in_chans=1, num_classes=10, embed_dim=32, depth=1,
                                         num_heads=2)).eval()
    with pytest.raises(ValueError, match="different patches"):
        e360.rollout_agreement(coarse, vit, x)


def test_relative_to_puts_better_above_one_for_either_direction():
    rows = [{"model": m, "dimension": "d", "quantity": q, "value": v, "se": se, "better": b, "n": 100}
            for m, vals in (("base", (80.0, 0.10, 0.0, 5.0)), ("small", (72.0, 0.05, 3.0, 4.0)))
            for q, v, se, b in zip(("top-1 (%)", "ece", "zero", "log10 size"), vals, (4.0, 0.01, None, None),
                                   ("higher", "lower", "lower", "lower"))]
    rel = e360.relative_to(pd.DataFrame(rows), "base").set_index(["model", "quantity"])
    assert rel.loc[("base", "top-1 (%)"), "relative"] == 1.0
    assert rel.loc[("small", "top-1 (%)"), "relative"] == pytest.approx(0.9)
    assert rel.loc[("small", "ece"), "relative"] == pytest.approx(2.0)  # half the error: twice as good
    assert rel.loc[("small", "top-1 (%)"), "relative se"] == pytest.approx(0.9 * math.sqrt((4 / 72) ** 2 + (4 / 80) ** 2))
    assert ("small", "zero") not in rel.index  # no ratio to a reference of 0
    assert rel.loc[("small", "log10 size"), "relative"] == pytest.approx(10.0)  # ten times smaller
    with pytest.raises(ValueError, match="No card of 'nobody'"):
        e360.relative_to(pd.DataFrame(rows), "nobody")


def test_agreement_is_total_for_the_same_function_and_none_for_a_shifted_one():
    vit, x = _tiny_vit(), _images(32, seed=5)
    same = e360.agreement(vit, vit, x)
    assert same["agreement"] == 100.0 and same["kl"] == pytest.approx(0.0, abs=1e-6)

    class Shifted(nn.Module):  # predicts the next class: never agrees
        def forward(self, z):
            return vit(z).roll(1, -1)

    assert e360.agreement(Shifted(), vit, x)["agreement"] == 0.0 and e360.agreement(Shifted(), vit, x)["kl"] > 0
    with pytest.raises(ValueError, match="non-empty batch"):
        e360.agreement(vit, vit, x[:0])


def test_spectral_complexity_follows_its_formula_and_reads_int8_weights():
    from vitsurvey.strategies import quant

    n, c = 8, 3.0
    layer = nn.Linear(n, n, bias=False)
    with torch.no_grad():
        layer.weight.copy_(c * torch.eye(n))
    # ||W||_2 = c; rows' L2 norms sum to n c; so (n^(2/3))^(3/2) = n multiplies c
    out = e360.spectral_complexity(nn.Sequential(layer))
    assert out["log10 spectral complexity"] == pytest.approx(math.log10(c) + math.log10(n))
    assert out["log10 product of spectral norms"] == pytest.approx(math.log10(c)) and out["matrices"] == 1
    two = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 4))
    base = e360.spectral_complexity(two)
    with torch.no_grad():
        for m in (two[0], two[2]):
            m.weight.mul_(2)
    assert e360.spectral_complexity(two)["log10 spectral complexity"] == pytest.approx(
        base["log10 spectral complexity"] + 2 * math.log10(2))
    int8 = e360.spectral_complexity(quant.dynamic_int8(two))
    assert int8["matrices"] == 2 and int8["log10 spectral complexity"] == pytest.approx(
        e360.spectral_complexity(two)["log10 spectral complexity"], abs=0.01)
    with pytest.raises(ValueError, match="no weight matrices"):
        e360.spectral_complexity(nn.GELU())


def _patterns(n, seed, classes=4, strength=0.3):
    templates = torch.randn(classes, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.arange(classes).repeat(n // classes)
    return strength * templates[y] + torch.randn(len(y), 1, 28, 28, generator=torch.Generator().manual_seed(seed)), y


def _linear_probe():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 4))


def test_imbalanced_indices_keep_a_fraction_of_the_rare_classes_only():
    y = torch.arange(4).repeat(50)
    idx = e360.imbalanced_indices(y, [1, 3], 0.1, seed=0)
    counts = torch.bincount(y[idx], minlength=4).tolist()
    assert counts == [50, 5, 50, 5] and torch.equal(idx, e360.imbalanced_indices(y, [1, 3], 0.1, seed=0))
    with pytest.raises(ValueError, match="rare must name classes present"):
        e360.imbalanced_indices(y, [7], 0.1)
    with pytest.raises(ValueError, match="keep is the fraction"):
        e360.imbalanced_indices(y, [1], 0.0)


def test_imbalanced_training_hurts_the_rare_class_against_a_balanced_control():
    from vitsurvey import profiles

    prof = profiles.get_profile("smoke", resolve_data=False).replace(epochs=3, batch_size=32, augment=False, lr=3e-3)
    table = e360.imbalanced_training(_linear_probe, _patterns(800, 1, strength=0.12), _patterns(400, 2, strength=0.12),
                                     prof, rare=[3], keep=0.05)
    assert len(table) == 8 and set(table["trained on"]) == {"imbalanced", "balanced (control)"}
    by = table.set_index(["trained on", "class"])
    assert by.loc[("imbalanced", "3"), "train images"] == 10 and by.loc[("imbalanced", "3"), "rare"]
    assert table.groupby("trained on")["train images"].sum().nunique() == 1  # the same number of images
    assert by.loc[("imbalanced", "3"), "accuracy"] < by.loc[("balanced (control)", "3"), "accuracy"]


def test_private_training_spends_its_budget_and_the_control_is_not_private():
    from vitsurvey import profiles

    prof = profiles.get_profile("smoke", resolve_data=False).replace(epochs=2, batch_size=32, augment=False, lr=3e-3)
    train_set, test_set = _patterns(256, 1), _patterns(64, 2)
    built = []

    def build():
        built.append(_linear_probe())
        return built[-1]

    table = e360.private_training(build, train_set, test_set, prof, (2.0, math.inf)).set_index("epsilon")
    private, control = table.loc[2.0], table.loc[math.inf]
    assert 0 < private["epsilon spent"] <= 2.0 * 1.05 and private["noise multiplier"] > 0
    assert control["epsilon spent"] == math.inf and control["noise multiplier"] == 0
    assert private["delta"] == pytest.approx(0.1 / 256) and (table["n"] == 64).all()
    assert len(built) == 2 and not built[0][1]._forward_hooks  # opacus's hooks are removed after training
    assert ((table["membership AUC"] > 0) & (table["membership AUC"] < 1)).all()
    vit_table = e360.private_training(_tiny_vit, (_images(64), torch.arange(10).repeat(7)[:64]),
                                      (_images(32, 1), torch.arange(10).repeat(4)[:32]), prof, (8.0,))
    assert vit_table["noise multiplier"].item() > 0  # the from-scratch ViT trains privately too
    for bad, match in (((0.0,), "epsilon is positive"), ((float("nan"),), "epsilon is positive"),
                       ((), "at least one privacy budget")):
        with pytest.raises(ValueError, match=match):
            e360.private_training(_linear_probe, train_set, test_set, prof, bad)
    with pytest.raises(ValueError, match="delta is a probability"):
        e360.private_training(_linear_probe, train_set, test_set, prof, (1.0,), delta=1.5)


def test_a_transfer_attack_is_crafted_on_the_source_and_scored_on_the_model():
    from vitsurvey.strategies import quant

    vit = _tiny_vit()
    x, y = _images(16, seed=7), torch.arange(10).repeat(2)[:16]
    int8 = quant.dynamic_int8(vit)
    with pytest.raises(ValueError, match="int8 kernels, which have no gradients"):
        e360.adversarial_accuracy(int8, x, y, INFO, (2 / 255,), attacks=("fgsm",))
    transfer = e360.adversarial_accuracy(int8, x, y, INFO, (0.0, 8 / 255), attacks=("fgsm",), source=vit)
    clean = 100.0 * (e360.logits_of(int8, x).argmax(-1) == y).float().mean().item()
    assert transfer["top1"].iloc[0] == pytest.approx(clean) and len(transfer) == 2
    assert e360.device_of(nn.GELU()) == torch.device("cpu") and e360.device_of(vit) == torch.device("cpu")


# --------------------------------------------------------------------------- measures that can fail


def test_an_empty_set_has_no_calibration_and_no_temperature():
    for fn in (e360.calibration, e360.fit_temperature):
        with pytest.raises(ValueError, match="no images"):
            fn(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long))
        with pytest.raises(ValueError, match="expected logits"):
            fn(torch.zeros(4, 10), torch.zeros(3, dtype=torch.long))


def test_relative_corruption_error_subtracts_the_clean_error():
    # model: clean error 10, errors 20 and 30 at two severities: degradation (20 - 10) + (30 - 10) = 30
    model = pd.DataFrame({"corruption": ["a"] * 3 + ["b"] * 3, "severity": [0, 1, 2] * 2,
                          "top1": [90, 80, 70, 90, 85, 85.0], "n": 10})
    # reference: clean error 40, errors 50 and 70: degradation 10 + 30 = 40 on a; none on b
    ref = pd.DataFrame({"corruption": ["a"] * 3 + ["b"] * 3, "severity": [0, 1, 2] * 2,
                        "top1": [60, 50, 30, 60, 60, 60.0], "n": 10})
    out = e360.relative_corruption_error(model, ref).set_index("corruption")
    assert out.loc["a", "relative ce"] == pytest.approx(30 / 40)
    assert math.isnan(out.loc["b", "relative ce"]) and not out.loc["b", "defined"]
    assert out.loc["mean", "relative ce"] == pytest.approx(30 / 40)
    # the plain CE rewards the model for its clean accuracy: (20 + 30) / (50 + 70), well below the relative one
    assert e360.corruption_error(model, ref).set_index("corruption").loc["a", "ce"] == pytest.approx(50 / 120)
    with pytest.raises(ValueError, match="no severity 0 rows"):
        e360.relative_corruption_error(model[model["severity"] > 0], ref)


def test_corrupted_correctness_pairs_the_corruptions_on_the_same_images():
    x = _images(40, seed=8)
    y = _MeanBrightness()(x).argmax(-1)
    right = e360.corrupted_correctness(_MeanBrightness(), x, y, INFO, 3)
    assert right.shape == (len(e360.CORRUPTIONS), 40) and right.dtype == torch.bool
    table = e360.corruption_accuracy(_MeanBrightness(), x, y, INFO, severities=(3,))
    assert (100.0 * right.float().mean(1)).tolist() == pytest.approx(table["top1"].tolist())
    # the card's standard error is over images of their share of corruptions survived
    vit, y = _tiny_vit(), torch.arange(10).repeat(4)
    card = e360.card(vit, (x, y), (x, y), INFO, resamples=5, explain=0)
    row = card[card["quantity"].str.startswith("top-1 under corruption")].iloc[0]
    share = 100.0 * e360.corrupted_correctness(vit, x, y, INFO, 3).float().mean(0)
    assert row["value"] == pytest.approx(share.mean().item())
    assert row["se"] == pytest.approx(share.std().item() / math.sqrt(40))


def test_membership_scores_are_the_logit_of_the_true_class_probability():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [30.0, -30.0, 0.0]])

    class Fixed(nn.Module):
        def forward(self, x):
            return logits[: len(x)]

    x, y = torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 0])
    p = logits.softmax(-1)
    by_hand = [math.log(p[0, 0] / (1 - p[0, 0])), math.log((1 / 3) / (2 / 3)), 30.0 - math.log(math.exp(-60) + 1)]
    assert e360.membership_scores(Fixed(), x, y).tolist() == pytest.approx(by_hand, rel=1e-5)  # finite where p -> 1


def test_shadow_splits_put_every_image_in_exactly_half_of_the_shadows():
    splits = e360.shadow_splits(50, 4, seed=1)
    assert splits.shape == (4, 50) and (splits.sum(0) == 2).all()
    assert not torch.equal(splits[0], splits[1])
    with pytest.raises(ValueError, match="even whole number"):
        e360.shadow_splits(50, 3)


def test_lira_uses_each_images_own_threshold_where_the_loss_threshold_cannot():
    # 200 images of very different difficulty: without training on an image, a model scores it at its difficulty
    # (shadows: difficulty + small noise); a member scores 1 higher. One threshold for all cannot tell them apart.
    g = torch.Generator().manual_seed(0)
    difficulty = torch.randn(200, generator=g) * 20
    member = torch.arange(200) < 100
    target = difficulty + member.float()
    splits = e360.shadow_splits(200, 4, seed=0)
    shadow = difficulty + 0.1 * torch.randn(4, 200, generator=g) + splits.float()  # each shadow's own members: +1
    from sklearn.metrics import roc_auc_score

    global_auc = roc_auc_score(member.numpy(), target.numpy())
    lira = e360.lira_offline(target, shadow, splits, fix_variance=True, one_sided=True)
    assert abs(global_auc - 0.5) < 0.1 and roc_auc_score(member.numpy(), lira.numpy()) > 0.99
    # one image by hand: the median of its two out-shadows, the spread of all out-scores, the normal CDF
    out = ~splits[:, 0]
    mu = shadow[out, 0].median().item() if out.sum() % 2 else shadow[out, 0].mean().item()
    sd = shadow[~splits].double().std(unbiased=False).item()
    by_hand = 0.5 * (1 + math.erf((target[0].item() - mu) / (sd * math.sqrt(2))))
    assert lira[0].item() == pytest.approx(by_hand, rel=1e-5)
    # the authors' code's default, minus the log-density: symmetric in the distance from the median
    two = e360.lira_offline(target, shadow, splits, fix_variance=True)
    z = (target[0].item() - mu) / sd
    assert two[0].item() == pytest.approx(0.5 * z * z + math.log(sd * math.sqrt(2 * math.pi)), rel=1e-5)
    with pytest.raises(ValueError, match="two or more shadows"):
        e360.lira_offline(target, shadow[:2], e360.shadow_splits(200, 2))
    with pytest.raises(ValueError, match="Expected target scores"):
        e360.lira_offline(target[:5], shadow, splits)


def test_damage_gap_measures_what_compression_takes_from_a_group_against_the_rest():
    group = torch.arange(8) < 4  # images 0-3: the rare classes
    before = [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]]
    after = [[0, 1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 0]]  # seed 1: the group loses 25, the rest 0
    out = e360.damage_gap(after, before, group.numpy())
    assert out["change in group"] == pytest.approx(-37.5) and out["change in rest"] == pytest.approx(-12.5)
    assert out["gap"] == pytest.approx(((-25 - 0) + (-50 + 25)) / 2) and out["low"] < out["gap"] < out["high"]
    assert out["se"] > 0 and out["seeds"] == 2
    with pytest.raises(ValueError, match="at least two test images"):
        e360.damage_gap(after, before, (torch.arange(8) < 1).numpy())


def test_deletion_is_judged_against_the_same_models_random_order():
    vit, x = _tiny_vit(), _images(16, seed=9)
    out = e360.deletion_versus_random(vit, x, seed=1)
    assert out["ratio"] == pytest.approx(out["rollout area"] / out["random area"])
    assert out["random area"] == pytest.approx(e360.curve_area(out["random curve"]))
    with pytest.raises(TypeError, match="no attention rollout"):
        e360.deletion_versus_random(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), x)


def test_layernorm_leaves_spectral_complexity_unidentifiable():
    # scale every matrix that writes into the residual stream: every LayerNorm divides the factor out again, so the
    # function is the same while the spectral measure grows by the factor to the power of those matrices
    vit, x = _tiny_vit(), _images(4, seed=10)
    scaled = _tiny_vit()
    with torch.no_grad():
        for t in (scaled.patch_embed.proj.weight, scaled.patch_embed.proj.bias, scaled.cls_token, scaled.pos_embed,
                  *(p for b in scaled.blocks for p in (b.attn.proj.weight, b.attn.proj.bias, b.mlp.fc2.weight,
                                                       b.mlp.fc2.bias))):
            t.mul_(10.0)
    assert torch.allclose(vit(x), scaled(x), atol=1e-3)
    grown = (e360.spectral_complexity(scaled)["log10 spectral complexity"]
             - e360.spectral_complexity(vit)["log10 spectral complexity"])
    assert grown == pytest.approx(1 + 2 * len(vit.blocks), abs=1e-3)  # patch embedding + two matrices per block


def test_class_incremental_measures_compressed_variants_after_each_task():
    from vitsurvey import profiles

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28, generator=g), torch.arange(4).repeat(16)
    prof = profiles.get_profile("smoke", resolve_data=False).replace(epochs=1, batch_size=16, augment=False)

    table = e360.class_incremental(lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 4)), (x, y), (x, y), prof,
                                   tasks=2, variants={"halved": _Halved})  # a "compression" keeping every prediction
    assert set(table["model"]) == {"as trained", "halved"}
    a, b = (table[table["model"] == m].reset_index(drop=True) for m in ("as trained", "halved"))
    assert a["top1"].tolist() == b["top1"].tolist()  # halving logits keeps every prediction
    with pytest.raises(ValueError, match="several models"):
        e360.continual_summary(table)
    assert e360.continual_summary(a)["average accuracy"] == pytest.approx(a[a["after task"] == 2]["top1"].mean())


class _Halved(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) / 2
