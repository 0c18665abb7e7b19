import math

import pandas as pd
import pytest
import torch

from vitsurvey import leaderboard as lb
from vitsurvey import measure, metrics, results
from vitsurvey.__main__ import main
from vitsurvey.models import ViTConfig, VisionTransformer
from vitsurvey.models.counts import nonzero_params
from vitsurvey.profiles import PROFILES
from vitsurvey.strategies import pruning, quant, tokens

CFG = ViTConfig(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2)
FAST = PROFILES["smoke"].replace(timing_rounds=2, timing_max_rounds=2, bench_warmup=0, bench_iters=1,
                                 bench_min_seconds=0.0, timing_batch=1)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return VisionTransformer(CFG).eval()


@pytest.fixture(scope="module")
def test_set():
    g = torch.Generator().manual_seed(1)
    return torch.randn(40, 1, 28, 28, generator=g), torch.arange(40) % 10


PRUNE = lb.Step("prune 50%", lambda m: pruning.prune_structured(m, 0.5))
INT8 = lb.Step("int8", quant.dynamic_int8)
TOME = lb.Step("ToMe", lambda m: tokens.ToMe(m, tokens.tome_schedule(4, m.cfg.depth)))


def test_compose_applies_steps_in_order_on_a_copy(vit):
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    seen = []
    steps = [lb.Step(n, lambda m, n=n: seen.append(n) or m) for n in ("a", "b", "c")]
    out = lb.compose(vit, steps)
    assert seen == ["a", "b", "c"]
    assert out is not vit
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())
    stacked = lb.compose(vit, [PRUNE, INT8])
    assert measure.count_params(stacked) == measure.count_params(pruning.prune_structured(vit, 0.5))
    assert measure.packed_weights(stacked)


def test_a_step_that_cannot_follow_names_itself_and_what_came_before(vit):
    with pytest.raises(lb.CompositionError, match=r"prune 50% cannot follow ToMe"):
        lb.compose(vit, [TOME, PRUNE])


def test_orders_say_which_work(vit):
    table, made = lb.orders(vit, [PRUNE, TOME])
    works = dict(zip(table["order"], table["works"]))
    assert works == {"prune 50% -> ToMe": True, "ToMe -> prune 50%": False}
    assert list(made) == ["prune 50% -> ToMe"]
    assert "cannot follow" in table.loc[~table["works"], "reason"].iloc[0]
    with pytest.raises(ValueError, match="must differ"):
        lb.orders(vit, [PRUNE, PRUNE])


def test_measure_models_one_protocol(vit, test_set, tmp_path, monkeypatch):
    monkeypatch.setenv(results.ENV_OUTPUT, str(tmp_path))  # no calibration file: one run's ranges
    calib = test_set[0][:16]
    models = {"baseline": vit, "int8": quant.dynamic_int8(vit),
              "W4A4": quant.QuantViT(vit, quant.QuantConfig(4, 4)).calibrate(calib),
              "pruned": pruning.prune_structured(vit, 0.5)}
    board, timings = lb.measure_models(models, test_set, FAST, families={"int8": "quantization"},
                                       controls={"pruned": "baseline", "W4A4": "baseline"})
    assert list(board.index) == list(models)
    assert board.loc["baseline", "speedup"] == 1.0 and board.loc["baseline", "verdict"] == "reference"
    assert board.loc["int8", "macs"] == board.loc["baseline", "macs"]  # int8 counted on its float twin
    assert board.loc["int8", "params"] == board.loc["baseline", "params"]
    assert board.loc["int8", "bytes"] < board.loc["baseline", "bytes"] / 2
    assert board.loc["W4A4", "bytes"] == models["W4A4"].stored_bytes()
    assert math.isnan(board.loc["W4A4", "speedup"])  # simulated: not timed
    assert board.loc["pruned", "macs"] < board.loc["baseline", "macs"]
    assert board.loc["int8", "family"] == "quantization"
    assert board["top1_se"].notna().all() and (board["n_test"] == 40).all()
    assert set(timings.rates) == {"baseline", "int8", "pruned"}
    assert board.loc["pruned", "top1_vs_control"] == pytest.approx(board.loc["pruned", "top1"] - board.loc["baseline", "top1"])
    # the verdict is McNemar's on the same 40 images, the interval a paired bootstrap around the difference
    pruned = board.loc["pruned"]
    assert pruned["top1_vs_control_low"] <= pruned["top1_vs_control"] <= pruned["top1_vs_control_high"]
    assert 0 <= pruned["p_vs_control"] <= 1
    assert pruned["accuracy_vs_control"] == ("within noise" if pruned["p_vs_control"] >= 0.05 else
                                            "higher" if pruned["top1_vs_control"] > 0 else "lower")
    assert board.loc["pruned", "speedup_vs_control"] == timings.ratio("pruned", "baseline").median
    assert board.loc["W4A4", "control"] == "baseline" and math.isnan(board.loc["W4A4", "speedup_vs_control"])
    assert pd.isna(board.loc["int8", "control"])
    with pytest.raises(KeyError, match="Controls must name"):
        lb.measure_models(models, test_set, FAST, controls={"pruned": "nope"})
    with pytest.raises(KeyError, match="reference"):
        lb.measure_models(models, test_set, FAST, reference="nope")
    with pytest.raises(ValueError, match="as many labels"):
        lb.measure_models(models, (test_set[0], test_set[1][:3]), FAST)


def test_nonzero_params_sees_magnitude_pruning(vit):
    sparse = pruning.make_permanent(pruning.magnitude_prune(VisionTransformer(CFG), 0.5))
    linear = sum(m.weight.numel() for m in pruning._block_linears(sparse))
    assert nonzero_params(sparse) <= measure.count_params(sparse) - linear // 2 + 1
    # rounding to int8 keeps every zero and may add a few (weights under half a step)
    assert 0.95 * nonzero_params(sparse) <= nonzero_params(quant.dynamic_int8(sparse)) <= nonzero_params(sparse)


def _board():
    return pd.DataFrame({
        "top1": [90.0, 89.0, 85.0, 80.0], "params": [100, 50, 60, 10], "macs": [100, 40, 50, 5],
        "bytes": [400, 200, 240, 40], "speedup": [1.0, 2.0, None, 3.0],
    }, index=pd.Index(["baseline", "small", "dominated", "tiny"], name="model"))


def test_pareto_fronts():
    fronts = lb.pareto_fronts(_board())
    assert fronts["front: MACs"].to_dict() == {"baseline": True, "small": True, "dominated": False, "tiny": True}
    assert not fronts.loc["dominated", "front: throughput"]  # not timed: on no throughput front
    assert not fronts["uncertain: MACs"].any()  # MACs are counted, not measured: no interval to doubt


def test_eer_sensitivity():
    board = _board()
    draws = lb.eer_sensitivity(board, draws=200, seed=0)
    assert len(draws) == 400 and draws["tau"].between(-1, 1).all()  # 200 draws, each in both forms
    assert draws["form"].value_counts().to_dict() == {"arithmetic": 200, "geometric": 200}
    geo = draws[draws["form"] == "geometric"]
    # the geometric form's ranking ignores the reference: equal weights give tau 1 whatever the reference drawn
    same = lb.eer_sensitivity(board, draws=1, forms=("geometric",))
    assert len(same) == 1 and geo["tau"].between(-1, 1).all()
    for ref in board.index:
        assert lb.eer_ranking(board, dict.fromkeys(["params", "macs", "bytes", "error"], 1.0), ref, "geometric").equals(
            lb.eer_ranking(board, dict.fromkeys(["params", "macs", "bytes", "error"], 1.0), "baseline", "geometric"))
    assert {"w params", "w macs", "w bytes", "w error"} <= set(draws.columns)
    # a model best on every feature tops every ranking, whatever the weights
    best = board.assign(top1=[90, 89, 85, 99.0], params=[100, 50, 60, 1], macs=[100, 40, 50, 1],
                        bytes=[400, 200, 240, 1])
    assert (lb.eer_sensitivity(best, draws=50)["top"] == "tiny").all()
    # features that all order the models alike give one ranking under any weights and reference: tau 1
    chain = pd.DataFrame({"top1": [95.0, 90, 85], "params": [1, 2, 3], "macs": [10, 20, 30], "bytes": [4, 8, 12]},
                         index=["a", "b", "c"])
    agree = lb.eer_sensitivity(chain, reference="a", draws=100)
    assert (agree["tau"] == 1).all() and (agree["top"] == "a").all()
    # conflicting features: some weighting reorders the models
    assert (draws["tau"] < 1).any()
    ranks = lb.eer_ranking(board, {"params": 1, "macs": 1, "bytes": 1, "error": 1}, "baseline")
    assert sorted(ranks) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="draws"):
        lb.eer_sensitivity(board, draws=0)
    with pytest.raises(KeyError, match="reference"):
        lb.eer_sensitivity(board, reference="nope")
    with pytest.raises(ValueError, match="at least two rows"):
        lb.eer_sensitivity(board.iloc[:1])


def _saved(tmp_path, monkeypatch, profile="smoke"):
    monkeypatch.setenv(results.ENV_OUTPUT, str(tmp_path))
    board = _board().assign(family=["", "pruning", "pruning", "distillation"], steps="", top1_se=0.5, n_test=100)
    return lb.save(board, profile, "cpu", extra={"dataset": "synthetic"})


def test_leaderboard_cli_without_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(results.ENV_OUTPUT, str(tmp_path))
    assert main(["leaderboard"]) == 1
    assert "No leaderboard results yet" in capsys.readouterr().err


def test_leaderboard_save_read_and_print(tmp_path, monkeypatch, capsys):
    csv, html = _saved(tmp_path, monkeypatch)
    assert csv.name == "12_leaderboard.csv" and html.suffix == ".html"
    page = html.read_text()
    assert "<table" in page and "dominated" in page
    assert main(["leaderboard", "--profile", "smoke", "--sort", "macs"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines()[2:] if line.strip()]
    assert [line.split()[0] for line in lines] == ["tiny", "small", "dominated", "baseline"]
    assert "n/a" in out  # the untimed row's speed-up
    assert "smoke" in out.splitlines()[0]


def test_leaderboard_shows_only_the_newest_run(tmp_path, monkeypatch):
    _saved(tmp_path, monkeypatch)
    first = pd.read_csv(tmp_path / "data" / "results" / "12_leaderboard.csv")
    newer = _board().iloc[:2].assign(family="", steps="", top1_se=0.5, n_test=100)
    monkeypatch.setattr("vitsurvey.studies.leaderboard._dt", _Later)
    lb.save(newer, "smoke", "cpu")
    assert len(pd.read_csv(tmp_path / "data" / "results" / "12_leaderboard.csv")) == len(first) + 2
    assert list(lb.read("smoke").index) == ["baseline", "small"]


class _Later:
    class datetime:
        @staticmethod
        def now():
            import datetime

            return datetime.datetime(2999, 1, 1)


def test_leaderboard_cli_bad_requests(tmp_path, monkeypatch, capsys):
    _saved(tmp_path, monkeypatch)
    assert main(["leaderboard", "--profile", "gpu"]) == 1
    assert "profiles measured: smoke" in capsys.readouterr().err
    assert main(["leaderboard", "--sort", "nonsense"]) == 2
    assert "Cannot sort by 'nonsense'" in capsys.readouterr().err


def test_a_results_file_not_written_by_the_leaderboard_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(results.ENV_OUTPUT, str(tmp_path))
    results.append(lb.STEM, [{"method": "x", "top1": 1.0}], "smoke", "cpu")
    assert main(["leaderboard"]) == 1
    assert "not written by the leaderboard" in capsys.readouterr().err


def test_additivity_of_a_stack():
    board = pd.DataFrame({"top1": [90.0, 88.0, 89.0, 87.2], "n_test": 10_000},
                         index=["base", "prune", "merge", "prune+merge"])
    timings = measure.Timings({"base": [100.0] * 3, "prune": [150.0] * 3, "merge": [200.0] * 3,
                               "prune+merge": [290.0, 300.0, 310.0]}, "base", dict.fromkeys(board.index, 8))
    out = lb.additivity(board, timings, "prune+merge", ["prune", "merge"], "base")
    assert out["predicted_speedup"] == pytest.approx(3.0) and out["adds_up_speed"]
    assert out["vs_product_low"] <= 1.0 <= out["vs_product_high"] and out["vs_product"] == pytest.approx(1.0)
    assert out["predicted_top1"] == pytest.approx(87.0) and out["adds_up_top1"]  # 0.2 points off, SE ~0.33
    slower = measure.Timings({**timings.rates, "prune+merge": [200.0] * 3}, "base", timings.batch_size)
    assert not lb.additivity(board, slower, "prune+merge", ["prune", "merge"], "base")["adds_up_speed"]
    # a part that is noisy in the same rounds as the stack: round by round the stack is exactly the product
    drifting = measure.Timings({"base": [100.0] * 3, "prune": [120.0, 150.0, 180.0], "merge": [200.0] * 3,
                                "prune+merge": [240.0, 300.0, 360.0]}, "base", timings.batch_size, resolution=0.0)
    both = lb.additivity(board, drifting, "prune+merge", ["prune", "merge"], "base")
    assert both["vs_product"] == both["vs_product_low"] == both["vs_product_high"] == pytest.approx(1.0)
    with pytest.raises(KeyError, match="not on the board"):
        lb.additivity(board, timings, "prune+merge", ["nope"], "base")
    # Amdahl: shares saved 1 - 1/1.5 = 1/3 and 1 - 1/2 = 1/2 add to 5/6, so 1 / (1 - 5/6) = 6x; measured 3x
    assert out["predicted_amdahl"] == pytest.approx(6.0) and out["vs_amdahl"] == pytest.approx(0.5)
    assert not out["adds_up_amdahl"]


def test_additivity_of_disjoint_shares_follows_amdahl():
    # each part saves a fifth of the base's time (1.25x); disjoint, the stack saves two fifths: 1 / 0.6 = 1.667x,
    # where the product predicts 1.5625x
    board = pd.DataFrame({"top1": [90.0, 90.0, 90.0, 90.0], "n_test": 10_000},
                         index=["base", "int8", "thin", "int8+thin"])
    timings = measure.Timings({"base": [100.0] * 5, "int8": [125.0] * 5, "thin": [125.0] * 5,
                               "int8+thin": [100 / 0.6] * 5}, "base", dict.fromkeys(board.index, 8))
    out = lb.additivity(board, timings, "int8+thin", ["int8", "thin"], "base")
    assert out["predicted_amdahl"] == pytest.approx(1 / 0.6) and out["predicted_speedup"] == pytest.approx(1.5625)
    assert out["adds_up_amdahl"] and out["vs_amdahl"] == pytest.approx(1.0)
    assert not out["adds_up_speed"]  # 6.7% above the product, outside the 3% resolution
    # shares that reach the whole time: Amdahl predicts no finite speed-up
    big = measure.Timings({**timings.rates, "int8": [250.0] * 5, "thin": [200.0] * 5}, "base", timings.batch_size)
    none = lb.additivity(board, big, "int8+thin", ["int8", "thin"], "base")
    assert math.isnan(none["predicted_amdahl"]) and not none["adds_up_amdahl"]


def test_measure_models_over_seeds(vit, test_set):
    """A row trained at several seeds: top-1 is the mean over them, its verdict against its control is the seeded
    comparison, and a control with one model stands at every seed of the row it is compared with."""
    torch.manual_seed(3)
    others = [VisionTransformer(CFG).eval() for _ in range(2)]
    models = {"baseline": vit, "trained": others[0], "fixed": pruning.prune_structured(vit, 0.5)}
    board, _ = lb.measure_models(models, test_set, FAST.replace(timing_rounds=1, timing_max_rounds=1),
                                 controls={"trained": "baseline", "fixed": "baseline"},
                                 later_seeds={"trained": others[1:]}, seeds={"trained": [0, 1]})
    x, y = test_set
    per_seed = [100.0 * float((m(x).argmax(-1) == y).double().mean()) for m in others]
    assert board.loc["trained", "top1"] == pytest.approx(sum(per_seed) / 2)
    assert board.loc["trained", "top1_seed_std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2**0.5)
    assert board.loc["trained", "seeds"] == "0,1" and board.loc["fixed", "seeds"] == ""
    by_seed = [float(v) for v in board.loc["trained", "top1_by_seed"].split(",")]
    assert by_seed == pytest.approx(per_seed, abs=1e-4)  # each seed's top-1, in the seeds' order
    assert board.loc["fixed", "top1_by_seed"] == ""
    assert math.isnan(board.loc["fixed", "top1_seed_std"])
    base = [(vit(x).argmax(-1)).numpy()] * 2
    expected = metrics.seeded_comparison([m(x).argmax(-1).numpy() for m in others], base, y.numpy())
    assert board.loc["trained", "top1_vs_control"] == pytest.approx(expected.difference)
    assert board.loc["trained", "p_vs_control"] == pytest.approx(expected.p_value)
    assert board.loc["trained", "accuracy_vs_control"] == expected.verdict()
    with pytest.raises(KeyError, match="later_seeds and seeds"):
        lb.measure_models(models, test_set, FAST, later_seeds={"nope": others})


def test_own_result_averages_the_seeds_asked_for(tmp_path, monkeypatch):
    monkeypatch.setenv(results.ENV_OUTPUT, str(tmp_path))
    results.append("07_knowledge_distillation", [{"method": "s", "seed": k, "top1": 80.0 + k} for k in range(3)],
                   "cpu", "cpu")
    results.append("07_knowledge_distillation", [{"method": "s", "seed": 0, "top1": 90.0}], "cpu", "cpu")
    assert lb.own_result("07_knowledge_distillation", "s", None, "cpu", seeds=(0, 1, 2)) == pytest.approx((90.0 + 81.0 + 82.0) / 3)  # seed 0: its newest row
    assert lb.own_result("07_knowledge_distillation", "s", None, "cpu", seeds=(0, 1, 2, 3)) is None  # seed 3 missing
    assert lb.own_result("07_knowledge_distillation", "s", None, "cpu") == 90.0
    assert lb.own_seed_results("07_knowledge_distillation", "s", None, "cpu", seeds=(2, 0)) == [82.0, 90.0]


def test_own_result_refuses_to_guess_among_settings(tmp_path, monkeypatch):
    """A notebook that sweeps a setting writes one method under several; without the setting, the newest row would be
    the sweep's last length, not the main comparison's, so the reader must name it."""
    monkeypatch.setenv(results.ENV_OUTPUT, str(tmp_path))
    results.append("07_knowledge_distillation",
                   [{"method": "s", "setting": f"{e} epochs", "seed": k, "top1": 70.0 + 5 * e + k}
                    for e in (1, 3) for k in range(2)], "cpu", "cpu")
    with pytest.raises(ValueError, match="several settings.*'1 epochs', '3 epochs'"):
        lb.own_result("07_knowledge_distillation", "s", None, "cpu", seeds=(0, 1))
    assert lb.own_seed_results("07_knowledge_distillation", "s", "1 epochs", "cpu", seeds=(0, 1)) == [75.0, 76.0]
    assert lb.own_result("07_knowledge_distillation", "s", "3 epochs", "cpu", seeds=(0, 1)) == pytest.approx(85.5)


def test_own_result_reads_the_newest_matching_row(tmp_path, monkeypatch):
    monkeypatch.setenv(results.ENV_OUTPUT, str(tmp_path))
    assert lb.own_result("05_weight_pruning", "magnitude", "60%", "cpu") is None  # never run
    results.append("05_weight_pruning", [{"method": "magnitude", "setting": "60%", "top1": 80.0},
                                         {"method": "magnitude", "setting": "80%", "top1": 70.0}], "cpu", "cpu")
    results.append("05_weight_pruning", [{"method": "magnitude", "setting": "60%", "top1": 81.0}], "cpu", "cpu")
    results.append("05_weight_pruning", [{"method": "magnitude", "setting": "60%", "top1": 50.0}], "smoke", "cpu")
    assert lb.own_result("05_weight_pruning", "magnitude", "60%", "cpu") == 81.0
    assert lb.own_result("05_weight_pruning", "magnitude", "80%", "cpu") == 70.0
    assert lb.own_result("05_weight_pruning", "magnitude", None, "smoke") == 50.0
    assert lb.own_result("05_weight_pruning", "magnitude", "60%", "gpu") is None
    assert lb.own_result("05_weight_pruning", "magnitude", "60%", "cpu", column="nonexistent") is None


def test_partial_results_print_as_not_available(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(results.ENV_OUTPUT, str(tmp_path))
    partial = pd.DataFrame({"top1": [90.0, 85.0], "family": ["baseline", "pruning"]},
                           index=pd.Index(["baseline", "pruned"], name="model"))  # no costs, no timing
    lb.save(partial, "cpu", "cpu")
    assert main(["leaderboard"]) == 0
    out = capsys.readouterr().out
    assert out.count("n/a") >= 2 * 5 and "not timed" in out
    assert main(["leaderboard", "--sort", "bytes"]) == 2  # a column this run does not have
    assert "choose one of" in capsys.readouterr().err
