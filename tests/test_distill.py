import math

import pytest
import torch
import torch.nn.functional as F

from vitsurvey import data, measure, models, train
from vitsurvey.models import ViTConfig, VisionTransformer, counts
from vitsurvey.profiles import PROFILES
from vitsurvey.strategies import distill

CFG = ViTConfig(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2)
X = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 3, 3, 9])


def _logits(seed: int, n: int = 5, k: int = 10) -> torch.Tensor:
    return 3 * torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


def test_soft_loss_is_zero_for_equal_logits_and_grows_with_distance():
    t = _logits(1)
    assert distill.soft_loss(t, t, tau=2.0).item() == pytest.approx(0.0, abs=1e-6)
    direction = _logits(2)
    losses = [distill.soft_loss(t + eps * direction, t, tau=2.0).item() for eps in (0.1, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(losses, losses[1:])) and losses[0] > 0


def test_soft_loss_is_tau_squared_kl_by_hand():
    s, t, tau = _logits(3), _logits(4), 3.0
    p_t, p_s = (t / tau).softmax(-1), (s / tau).softmax(-1)
    per_image = tau**2 * (p_t * (p_t.log() - p_s.log())).sum(-1)
    assert distill.soft_loss(s, t, tau, "batchmean").item() == pytest.approx(per_image.mean().item(), rel=1e-5)
    # DeiT's default: the sum over images and classes divided by images x classes, 10 classes here
    assert distill.soft_loss(s, t, tau).item() == pytest.approx(per_image.sum().item() / (5 * 10), rel=1e-5)


def test_soft_loss_of_a_known_pair_of_logits():
    # one image, two classes; teacher logits (ln 3, 0): p_t = (3/4, 1/4); student (0, 0): p_s = (1/2, 1/2)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.1308...
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    assert distill.soft_loss(s, t, 1.0).item() == pytest.approx(kl / 2, rel=1e-6)  # DeiT: / (1 image x 2 classes)
    assert distill.soft_loss(s, t, 1.0, "batchmean").item() == pytest.approx(kl, rel=1e-6)
    # tau = 2 halves the logits: p_t = (sqrt 3, 1) / (sqrt 3 + 1), and tau^2 = 4 multiplies the KL
    a = math.sqrt(3) / (math.sqrt(3) + 1)
    kl2 = a * math.log(a / 0.5) + (1 - a) * math.log((1 - a) / 0.5)
    assert distill.soft_loss(s, t, 2.0).item() == pytest.approx(4 * kl2 / 2, rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        distill.soft_loss(s, t, 1.0, "mean")
    with pytest.raises(ValueError, match="reduction"):
        distill.Distillation(torch.nn.Identity(), "soft", reduction="sum")


def test_hard_loss_is_cross_entropy_on_the_teacher_argmax():
    s, t = _logits(5), _logits(6)
    assert torch.allclose(distill.hard_loss(s, t), F.cross_entropy(s, t.argmax(-1)))
    by_hand = -(s.log_softmax(-1).gather(1, t.argmax(-1, keepdim=True))).mean()
    assert distill.hard_loss(s, t).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_distillation_mixes_label_and_teacher_terms():
    s, t = _logits(7, n=4), _logits(8, n=4)
    teacher = torch.nn.Identity()  # returns its input: the "images" below are the teacher's logits
    for kind, kd in (("soft", distill.soft_loss(s, t, 2.0)), ("hard", distill.hard_loss(s, t))):
        objective = distill.Distillation(teacher, kind, alpha=0.3, tau=2.0, label_smoothing=0.0)
        expected = 0.7 * F.cross_entropy(s, Y) + 0.3 * kd
        assert objective(None, t, Y, s).item() == pytest.approx(expected.item(), rel=1e-6)
    # a two-headed student: the class head takes the labels, the distillation head the teacher
    s2 = _logits(9, n=4)
    objective = distill.Distillation(teacher, "hard", alpha=0.5, label_smoothing=0.0)
    expected = 0.5 * F.cross_entropy(s, Y) + 0.5 * distill.hard_loss(s2, t)
    assert objective(None, t, Y, (s, s2)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_teacher_runs_in_eval_mode_and_gets_no_gradient():
    torch.manual_seed(0)
    teacher, student = VisionTransformer(CFG).train(), VisionTransformer(CFG).train()
    before = [p.clone() for p in teacher.parameters()]
    distill.Distillation(teacher, "soft", tau=2.0)(student, X, Y, student(X)).backward()
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    assert all(p.requires_grad for p in teacher.parameters())  # still trainable elsewhere


@pytest.mark.parametrize("kw, match", [
    ({"tau": 0.0}, "tau must be positive"), ({"tau": -1.0}, "tau must be positive"),
    ({"alpha": 1.5}, r"alpha .* \[0, 1\]"), ({"alpha": -0.1}, r"alpha .* \[0, 1\]"),
    ({"kind": "medium"}, "Unknown distillation kind"),
])
def test_bad_settings_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        distill.Distillation(torch.nn.Identity(), **kw)
    if "tau" in kw:
        with pytest.raises(ValueError, match=match):
            distill.soft_loss(_logits(1), _logits(2), kw["tau"])


def test_a_teacher_with_other_classes_is_a_clear_error():
    teacher = VisionTransformer(ViTConfig(**{**CFG.__dict__, "num_classes": 1000}))
    student = VisionTransformer(CFG).train()
    with pytest.raises(ValueError, match="teacher predicts 1000 classes and the student 10"):
        distill.Distillation(teacher)(student, X, Y, student(X))


def test_token_off_is_the_plain_vit():
    torch.manual_seed(0)
    plain = VisionTransformer(CFG).eval()
    off = distill.DistilledViT(CFG, distill_token=False).eval()
    off.load_state_dict(plain.state_dict())  # same parameters, no extras
    assert set(off.state_dict()) == set(plain.state_dict())
    with torch.no_grad():
        assert torch.equal(off(X), plain(X))
    assert ViTConfig.of(off) == CFG


def test_distillation_token_averages_its_heads_at_inference():
    torch.manual_seed(0)
    model = distill.DistilledViT(CFG)
    assert model.pos_embed.shape[1] == CFG.num_tokens + 1 and model.num_prefix_tokens == 2
    model.train()
    cls_logits, dist_logits = model(X)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(X)
        assert torch.allclose(model(X), (model.head(feats[:, 0]) + model.head_dist(feats[:, 1])) / 2)
    assert not torch.allclose(cls_logits, dist_logits)  # two heads, two different outputs
    assert ViTConfig.of(model) is None  # not a plain ViT: the analytic counts do not apply


def test_distillation_token_keeps_the_plain_initialisation():
    torch.manual_seed(3)
    plain = VisionTransformer(CFG)
    torch.manual_seed(3)
    token = distill.DistilledViT(CFG)
    shared = {k: v for k, v in plain.state_dict().items() if k != "pos_embed"}
    assert all(torch.equal(v, token.state_dict()[k]) for k, v in shared.items())


def test_distillation_token_costs_one_token_more():
    model = distill.DistilledViT(CFG).eval()
    plain = VisionTransformer(CFG).eval()
    x1 = torch.zeros(1, 1, 28, 28)
    extra_params = counts.count_params(model) - counts.count_params(plain)
    assert extra_params == CFG.embed_dim * 2 + CFG.embed_dim * CFG.num_classes + CFG.num_classes
    assert measure.count_macs(model, x1).total > measure.count_macs(plain, x1).total
    assert counts.vit_macs(model)["total"] == measure.count_macs(model, x1).total  # one more token, one more head
    by_hand = counts.vit_macs(CFG, tokens=CFG.num_tokens + 1)["total"] + CFG.embed_dim * CFG.num_classes
    assert counts.vit_macs(model)["total"] == by_hand


def test_small_resnet_fits_small_images():
    net = models.small_resnet(1, 10, channels=(8, 8, 16, 16))
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert net.conv1.stride == (1, 1)
    for bad in ((), (8, 16), (7, 8, 16, 16), (8, 0, 16, 16)):
        with pytest.raises(ValueError, match="channels"):
            models.small_resnet(1, 10, channels=bad)


def test_fit_trains_a_student_through_the_loss_hook(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSURVEY_OUTPUT", str(tmp_path))
    p = PROFILES["smoke"].replace(dataset="synthetic", train_samples=256, test_samples=64, epochs=2,
                                  batch_size=32, augment=True)
    tr, te = data.loaders(p)
    teacher = VisionTransformer(train.baseline_config(p))
    calls = []

    class Counting(distill.Distillation):
        def __call__(self, model, images, labels, outputs):
            calls.append(isinstance(outputs, tuple))
            return super().__call__(model, images, labels, outputs)

    student = distill.DistilledViT(train.baseline_config(p))
    result = train.fit(student, tr, te, p, loss=Counting(teacher, "soft", tau=2.0), log=None)
    assert len(calls) == 2 * len(tr) and all(calls)  # every step, with both heads' outputs
    assert math.isfinite(result.history[-1]["loss"])
