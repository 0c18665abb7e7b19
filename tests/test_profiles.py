import pytest
import torch

from vitsurvey import profiles
from vitsurvey.profiles import get_profile


def test_argument_beats_environment(monkeypatch):
    monkeypatch.setenv(profiles.ENV_VAR, "cpu")
    assert get_profile("smoke").name == "smoke"


def test_environment_beats_hardware(monkeypatch):
    monkeypatch.setenv(profiles.ENV_VAR, "smoke")
    assert get_profile("auto").name == "smoke"
    assert get_profile(None).name == "smoke"


def test_hardware_decides_last(monkeypatch):
    monkeypatch.delenv(profiles.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_profile().name == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_profile().name == "gpu"


@pytest.mark.parametrize("bad", ["fast", "GPUs", ""])
def test_unknown_name_lists_valid_ones(monkeypatch, bad):
    monkeypatch.delenv(profiles.ENV_VAR, raising=False)
    with pytest.raises(ValueError, match="Valid profiles: smoke, cpu, gpu, auto"):
        get_profile(bad or " ")


def test_unknown_name_from_environment_says_so(monkeypatch):
    monkeypatch.setenv(profiles.ENV_VAR, "huge")
    with pytest.raises(ValueError, match=r"'huge' \(from the \$VITSURVEY_PROFILE\)"):
        get_profile()


def test_gpu_profile_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        get_profile("gpu")


def test_profiles_grow_in_size():
    smoke, cpu, gpu = (profiles.PROFILES[n] for n in ("smoke", "cpu", "gpu"))
    assert smoke.train_samples is not None and smoke.train_samples < 5000
    assert smoke.epochs <= cpu.epochs <= gpu.epochs
    assert max(smoke.bench_batch_sizes) < max(cpu.bench_batch_sizes) < max(gpu.bench_batch_sizes)


def test_replace_keeps_the_rest():
    p = profiles.PROFILES["smoke"].replace(epochs=3)
    assert p.epochs == 3 and p.batch_size == profiles.PROFILES["smoke"].batch_size


def test_mixer_study_budget_and_grids():
    for p in profiles.PROFILES.values():
        m = p.for_mixers()
        assert (m.train_samples, m.epochs) == (p.mixer_samples, p.mixer_epochs)
        assert m.baseline == p.baseline and m.batch_size == p.batch_size  # only the budget changes
        assert list(p.mixer_grids) == sorted(set(p.mixer_grids)) and all(g % 4 == 0 for g in p.mixer_grids), p.name
    smoke, cpu, gpu = (profiles.PROFILES[n] for n in ("smoke", "cpu", "gpu"))
    assert max(smoke.mixer_grids) < max(cpu.mixer_grids) < max(gpu.mixer_grids)


def test_multiplex_study_budget_and_token_sets():
    from vitsurvey import train

    for p in profiles.PROFILES.values():
        m = p.for_multiplex()
        assert (m.train_samples, m.epochs) == (p.multiplex_samples, p.multiplex_epochs)
        assert m.baseline == p.baseline and m.batch_size == p.batch_size  # only the budget changes
        side = int(p.multiplex_k**0.5)
        assert side * side == p.multiplex_k and train.baseline_config(p).grid % side == 0, p.name
