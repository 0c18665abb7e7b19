import math

import pytest
import torch

from vitsurvey import checkpoints, data, train
from vitsurvey.models import VisionTransformer
from vitsurvey.profiles import PROFILES

TINY = PROFILES["smoke"].replace(dataset="synthetic", train_samples=1024, test_samples=256, epochs=8,
                                 batch_size=32, lr=3e-3, augment=False)


def test_augment_only_shifts_and_flips():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    out = train.augment(x, max_shift=0, generator=torch.Generator().manual_seed(0))
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    shifted = train.augment(x, max_shift=1)
    assert shifted.shape == x.shape


def test_fit_learns_a_learnable_task(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSURVEY_OUTPUT", str(tmp_path))
    model = VisionTransformer(train.baseline_config(TINY))
    tr, te = data.loaders(TINY)
    before = train.evaluate(model, te)
    calls = []

    def objective(model, x, y, logits):
        calls.append(x.shape[0])
        return train.label_loss(model, x, y, logits)

    result = train.fit(model, tr, te, TINY, loss=objective, log=None)
    assert result.top1 > 90 > before
    assert len(result.history) == 8 and result.train_img_per_s > 0
    assert len(calls) == 8 * len(tr)


def test_baseline_is_cached_per_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSURVEY_OUTPUT", str(tmp_path))
    p = TINY.replace(epochs=1)
    model, result = train.trained_baseline(p, log=None)
    path = checkpoints.checkpoint_path(p)
    assert path.exists()
    again, again_result = train.trained_baseline(p, log=None)
    assert again_result == result
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    changed, changed_result = train.trained_baseline(p.replace(lr=1e-4), log=None)  # other settings: retrain
    assert changed_result.history != result.history
    # both are kept side by side: neither overwrites the other
    assert checkpoints.checkpoint_path(p.replace(lr=1e-4)) != path and path.exists()
    assert train.trained_baseline(p, log=None)[1] == result


def test_the_same_seed_trains_bit_for_bit_and_another_seed_differs_on_the_same_images(out):
    p = TINY.replace(epochs=1, train_samples=256, augment=True)
    assert p.training_seeds() == tuple(range(p.seed, p.seed + p.seeds)) and len(p.training_seeds()) >= 2
    first, second = (p.replace(seed=s) for s in p.training_seeds()[:2])
    runs = []
    for prof in (first, first, second):
        train.seed_everything(prof.seed)
        model = VisionTransformer(train.baseline_config(prof))
        tr, te = data.loaders(prof)
        runs.append((train.fit(model, tr, te, prof, log=None), model.state_dict(), te.dataset.tensors[1]))
    (a, wa, ya), (b, wb, yb), (c, wc, yc) = runs
    assert a.history == b.history and all(torch.equal(wa[k], wb[k]) for k in wa)  # bit for bit
    assert any(not torch.equal(wa[k], wc[k]) for k in wa) and a.history != c.history  # another seed differs
    assert torch.equal(ya, yc)  # ... on the same test images, so the two can be compared paired


def test_label_loss_is_smoothed_cross_entropy_averaged_over_heads():
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    other = torch.randn(6, 10, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6)
    one = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    assert torch.allclose(train.label_loss(None, None, y, logits), one)
    two = torch.nn.functional.cross_entropy(other, y, label_smoothing=0.1)
    assert torch.allclose(train.label_loss(None, None, y, (logits, other)), (one + two) / 2)


def test_evaluate_rejects_empty():
    model = VisionTransformer(train.baseline_config(TINY))
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 1, 28, 28), torch.zeros(0)))
    with pytest.raises(ValueError, match="empty"):
        train.evaluate(model, empty)


def test_too_little_data_is_a_clear_error():
    p = TINY.replace(train_samples=8, batch_size=32)
    tr, te = data.loaders(p)
    with pytest.raises(ValueError, match="smaller than one batch"):
        train.fit(VisionTransformer(train.baseline_config(p)), tr, te, p, log=None)


def test_finetune_uses_the_profiles_fine_tune_sizes(monkeypatch):
    seen = {}
    real_fit = train.fit

    def spy(model, train_loader, test_loader, profile, **kw):
        seen.update(samples=len(train_loader.dataset), epochs=profile.epochs, lr=profile.lr)
        return real_fit(model, train_loader, test_loader, profile, **kw)

    monkeypatch.setattr(train, "fit", spy)
    p = TINY.replace(finetune_samples=256, finetune_epochs=2, finetune_lr=1e-4)
    result = train.finetune(VisionTransformer(train.baseline_config(p)), p)
    assert seen == {"samples": 256, "epochs": 2, "lr": 1e-4}
    assert len(result.history) == 2


def test_a_finetune_without_test_never_meets_the_test_images(monkeypatch):
    calls = []
    real_evaluate = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: calls.append(1) or real_evaluate(*a, **k))
    p = TINY.replace(finetune_samples=256, finetune_epochs=2)
    model = VisionTransformer(train.baseline_config(p))
    before = [t.clone() for t in model.parameters()]
    result = train.finetune(model, p, test=False)
    assert calls == [] and math.isnan(result.top1) and len(result.history) == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it did train
    train.finetune(model, p)
    assert len(calls) == 2  # tested after each of the 2 epochs, as before


def test_baseline_cache_ignores_settings_that_do_not_affect_training(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSURVEY_OUTPUT", str(tmp_path))
    p = TINY.replace(epochs=1)
    _, first = train.trained_baseline(p, log=None)
    _, again = train.trained_baseline(p.replace(bench_iters=99, compression_levels=(0.5,)), log=None)
    assert again == first  # loaded, not retrained


def test_checkpoint_key_of_a_default_config_has_the_original_fields_only():
    from vitsurvey import profiles

    key = checkpoints.training_settings(profiles.PROFILES["cpu"])["baseline"]
    assert set(key) == {"img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads",
                        "mlp_ratio"}  # so checkpoints trained before the mixer fields existed keep their names
    pooled = profiles.PROFILES["cpu"].replace(baseline=profiles.PROFILES["cpu"].baseline.with_mixer("pool"))
    assert checkpoints.training_settings(pooled)["baseline"]["mixer"] == "pool"
    assert checkpoints.checkpoint_path(pooled) != checkpoints.checkpoint_path(profiles.PROFILES["cpu"])


def test_prepare_wraps_model_optimizer_and_loader_and_takes_over_clipping(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSURVEY_OUTPUT", str(tmp_path))
    model = VisionTransformer(train.baseline_config(TINY))
    tr, te = data.loaders(TINY)
    first = next(iter(tr))
    seen, clipped = [], []

    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            seen.append(x.shape[0])
            return self.inner(x)

    def prepare(m, opt, loader):
        assert m is model and isinstance(opt, torch.optim.AdamW) and loader is tr
        one_batch = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*first), batch_size=len(first[1]))
        return Counting(m), opt, one_batch

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: clipped.append(1))
    p = TINY.replace(epochs=2)
    result = train.fit(model, tr, te, p, log=None, prepare=prepare)
    assert seen == [len(first[1])] * 2 and not clipped  # the wrapped loader and model ran; no batch clipping
    assert result.train_img_per_s > 0 and len(result.history) == 2
    train.fit(model, tr, te, p, log=None)
    assert len(clipped) == 2 * len(tr)  # without prepare, every step clips
