"""The leaderboard of notebook 12: every strategy and their compositions, measured under one protocol.

The protocol, the same for every model: top-1 on the same test images with its binomial standard error;
parameters (int8's packed weights included) and non-zero parameters; MACs per image (fvcore, attention
counted; int8 on its float twin); bytes as stored (``torch.save``; simulated quantization at its bit width);
peak inference memory; throughput relative to the reference from **one** interleaved timing run
(:func:`vitsurvey.measure.relative_throughput`: the median over the rounds with its 95% interval, one thread per
model on a CPU). Simulated (fake) quantization runs float kernels, so it is not timed. A row whose model was trained
with several seeds shows the mean top-1 over them (a trained model's accuracy varies with its seed); its speed is
timed once, on the first seed's model, since every seed's model has the same architecture and structure.

Strategies take a model and return a model, so a composition is a list of :class:`Step` applied in order
(:func:`compose`); :func:`orders` tries every order of a set of steps and says which cannot follow which.
:func:`eer_sensitivity` asks whether one Efficient Error Rate ranking means anything, and :func:`read` /
:func:`format_board` are what ``python -m vitsurvey leaderboard`` prints from the results file, without
rerunning anything.
"""

from __future__ import annotations

import copy
import datetime as _dt
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .. import checks, measure, metrics, results, train
from ..data import tensor_loader
from ..models.counts import nonzero_params
from ..strategies.quant import QuantViT

if TYPE_CHECKING:
    from ..profiles import Profile

__all__ = [
    "COLUMNS", "CompositionError", "FRONTS", "FRONT_INTERVALS", "NoResults", "STEM", "Step", "additivity",
    "compose", "describe_run", "eer_ranking", "eer_sensitivity", "format_board", "is_simulated", "measure_models",
    "model_bytes", "orders", "own_result", "own_seed_results", "pareto_fronts", "read", "save", "write_html",
]

STEM = "12_leaderboard"
"""Results file of the leaderboard: ``data/results/12_leaderboard.csv`` (and ``.html`` beside it)."""

COLUMNS = ["model", "family", "steps", "control", "top1", "top1_se", "top1_seed_std", "seeds", "top1_by_seed",
           "n_test",
           "top1_vs_control", "top1_vs_control_low", "top1_vs_control_high", "detectable_vs_control", "p_vs_control",
           "accuracy_vs_control",
           "params", "nonzero_params", "macs", "bytes", "infer_mem_bytes", "speedup", "speedup_low", "speedup_high",
           "verdict", "speedup_vs_control", "speedup_vs_control_low", "speedup_vs_control_high", "throughput_img_s",
           "timing_rounds", "timing_clock", "timing_threads", "load_before", "load_after", "cores", "steal_pct",
           "batch_size"]
"""The measured columns of a leaderboard row, in the order they are shown."""


class CompositionError(ValueError):
    """A step of a stack cannot follow the steps before it (e.g. structured pruning after int8)."""


@dataclass(frozen=True)
class Step:
    """One strategy as a step of a stack: a name and a function from a model to a model (which may train it)."""

    name: str
    apply: Callable[[nn.Module], nn.Module]


def compose(model: nn.Module, steps: Sequence[Step]) -> nn.Module:
    """``steps`` applied in order to a copy of ``model`` (the model passed in is left as it was).

    A step that cannot take what the steps before it made raises :class:`CompositionError` naming it and
    them, with the strategy's own reason: which orders work is a finding, not a crash.
    """
    current = copy.deepcopy(model)
    done: list[str] = []
    for step in steps:
        try:
            current = step.apply(current)
        except (TypeError, ValueError, AttributeError, NotImplementedError, RuntimeError) as exc:
            after = " -> ".join(done) if done else "nothing"
            raise CompositionError(f"{step.name} cannot follow {after}: {exc}") from exc
        done.append(step.name)
    return current


def orders(model: nn.Module, steps: Sequence[Step]) -> tuple[pd.DataFrame, dict[str, nn.Module]]:
    """Every order of ``steps`` composed on ``model``: one row per order (``order``, ``works``, ``reason``) and
    the models of the orders that work, keyed by their order (``"a -> b -> c"``). Steps that train run once
    per order that reaches them."""
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"Step names must differ, got {names}.")
    rows, made = [], {}
    for perm in itertools.permutations(steps):
        key = " -> ".join(s.name for s in perm)
        try:
            made[key] = compose(model, perm)
            rows.append({"order": key, "works": True, "reason": ""})
        except CompositionError as exc:
            rows.append({"order": key, "works": False, "reason": str(exc)})
    return pd.DataFrame(rows), made


# --------------------------------------------------------------------------- measuring


def is_simulated(model: nn.Module) -> bool:
    """Whether ``model`` simulates low precision with float kernels (its speed says nothing about the method)."""
    return any(isinstance(m, QuantViT) for m in model.modules())


def model_bytes(model: nn.Module) -> int:
    """Bytes as stored: ``torch.save`` of the state dict, or, for simulated quantization, the size at its bit
    width (:meth:`~vitsurvey.strategies.quant.QuantViT.stored_bytes`)."""
    simulated = [m for m in model.modules() if isinstance(m, QuantViT)]
    if simulated:
        if len(simulated) > 1 or sum(p.numel() for p in model.parameters()) != sum(
                p.numel() for p in simulated[0].parameters()):
            raise ValueError("model_bytes reads a QuantViT alone; this model holds more than one QuantViT or "
                             "parameters outside it: measure the parts separately.")
        return simulated[0].stored_bytes()
    return measure.serialized_bytes(model)


def measure_models(
    models: Mapping[str, nn.Module],
    test_set: tuple[Tensor, Tensor],
    profile: Profile,
    reference: str = "baseline",
    families: Mapping[str, str] | None = None,
    steps: Mapping[str, str] | None = None,
    controls: Mapping[str, str] | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    later_seeds: Mapping[str, Sequence[nn.Module]] | None = None,
    seeds: Mapping[str, Sequence[int]] | None = None,
) -> tuple[pd.DataFrame, measure.Timings | None]:
    """Every model under the one protocol (module docstring); one row per model with :data:`COLUMNS`.

    ``controls`` maps a model to the row it must be judged against: the uncompressed model of the same
    architecture given the same training (a compressed model that was fine-tuned is compared with the
    baseline given that fine-tune, a model trained from scratch with its architecture's reference trained
    alike). Its top-1 change (points) with the verdict of a paired comparison on the same test images
    (:func:`vitsurvey.metrics.seeded_comparison`, over the seeds and the test images; ``top1_vs_control_low``/``_high``
    its 95% interval, ``p_vs_control`` the test's p-value, ``detectable_vs_control`` the smallest difference the run
    could have detected with 80% power) and its speed-up against that control (from the same
    timing run) fill the ``*_vs_control`` columns.

    ``batch_size`` (default: eight times the profile's timing batch) is the batch every model is timed and
    its memory measured at; a multiple of eight, so that no multiplexer of up to eight images pads its last
    group. The test images go through unshuffled in batches of 256, so a multiplexer mixes the same groups
    whatever is measured alongside. ``families`` and ``steps`` label the rows (strategy family; what was
    applied). Returns the table (indexed by model) and the timing run (None when nothing could be timed).

    Seeds: ``models`` holds each row's first-seed model (the one measured and timed); ``later_seeds`` maps a row
    trained with several seeds to its models of the other seeds, in order, and ``seeds`` to all its seeds (written
    to the ``seeds`` column as ``"0,1,2"``; empty where no training made the row). Such a row's ``top1`` is the mean
    over its seeds, ``top1_seed_std`` their standard deviation, ``top1_by_seed`` each seed's top-1 (``"80.1600,..."``,
    in the seeds' order), and its comparison with its control is :func:`vitsurvey.metrics.seeded_comparison` (seeds
    and test images together). A side with one model (no seeds, or one) is that one model at every seed of the other
    side: a fixed model against a recipe whose seeds vary.
    """
    if reference not in models:
        raise KeyError(f"The reference {reference!r} is not among the models: {', '.join(models)}.")
    unknown = {n: c for n, c in (controls or {}).items() if n not in models or c not in models}
    if unknown:
        raise KeyError(f"Controls must name measured models; not among them: {unknown}.")
    x, y = test_set
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"The test set needs as many labels as images, at least one; got {len(x)} and {len(y)}.")
    shape = tuple(x.shape[1:])
    batch = batch_size or 8 * profile.timing_batch
    probe = torch.zeros(8, *shape, device=device)
    unknown = [n for n in [*(later_seeds or {}), *(seeds or {})] if n not in models]
    if unknown:
        raise KeyError(f"later_seeds and seeds must name measured models; not among them: {unknown}.")
    rows = {}
    predictions: dict[str, list[np.ndarray]] = {}
    for name, model in models.items():
        model = model.to(device).eval()
        predictions[name] = []
        for m in (model, *(later_seeds or {}).get(name, ())):
            predicted, labels = train.predict(m.to(device).eval(), tensor_loader(x, y, 256), device)
            predictions[name].append(predicted.numpy())
        per_seed = [100.0 * float((p == labels.numpy()).mean()) for p in predictions[name]]
        top1 = float(np.mean(per_seed))
        rows[name] = {
            "model": name, "family": (families or {}).get(name, ""), "steps": (steps or {}).get(name, ""),
            "top1": top1, "top1_se": metrics.top1_se(top1, len(y)), "n_test": len(y),
            "top1_seed_std": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else np.nan,
            "seeds": ",".join(str(int(s)) for s in (seeds or {}).get(name, ())),
            "top1_by_seed": ",".join(f"{v:.4f}" for v in per_seed) if (seeds or {}).get(name) else "",
            "params": measure.count_params(model, trainable_only=False), "nonzero_params": nonzero_params(model),
            "macs": round(measure.count_macs(model, probe).total / len(probe)), "bytes": model_bytes(model),
            "infer_mem_bytes": measure.inference_memory(model, shape, batch, device).peak_bytes,
        }
    timed = {n: m for n, m in models.items() if not is_simulated(m)}
    timings = None
    if reference in timed:
        timings = measure.relative_throughput(timed, shape, batch, device, reference=reference, **profile.timing())
        for name in timed:
            ratio = timings.ratio(name)
            rows[name].update(speedup=ratio.median, speedup_low=ratio.low, speedup_high=ratio.high,
                              verdict="reference" if name == reference else ratio.verdict(),
                              throughput_img_s=timings.rate(name).median, batch_size=batch, **timings.columns())
    for name, control in (controls or {}).items():
        a, b = predictions[name], predictions[control]
        if len(a) != len(b) and 1 in (len(a), len(b)):  # one fixed model against a seeded recipe
            a, b = (a * len(b), b) if len(a) == 1 else (a, b * len(a))
        if len(a) != len(b):
            raise ValueError(f"{name!r} has {len(a)} seeds and its control {control!r} {len(b)}: a seeded "
                             "comparison needs the same seeds on both sides.")
        paired = metrics.seeded_comparison(a, b, labels.numpy())
        rows[name].update(control=control, top1_vs_control=paired.difference, top1_vs_control_low=paired.low,
                          top1_vs_control_high=paired.high, p_vs_control=paired.p_value,
                          detectable_vs_control=paired.detectable,
                          accuracy_vs_control="control" if name == control else paired.verdict())
        if timings is not None and name in timings.rates and control in timings.rates:
            ratio = timings.ratio(name, control)
            rows[name].update(speedup_vs_control=ratio.median, speedup_vs_control_low=ratio.low,
                              speedup_vs_control_high=ratio.high)
    board = pd.DataFrame(list(rows.values())).reindex(columns=COLUMNS).set_index("model")
    return board, timings


def additivity(board: pd.DataFrame, timings: measure.Timings, stack: str, parts: Sequence[str],
               base: str) -> dict[str, float | bool]:
    """Do the gains of a stack add up? Its measured speed-up over ``base`` against two predictions from its
    ``parts``' speed-ups (each part measured alone on ``base``, all in the same timing run), and its top-1 change
    against the sum of theirs.

    Part p alone runs ``base`` at speed-up S_p, so it removes the share f_p = 1 - 1/S_p of the base's time.
    * **Product** (``predicted_speedup``): when each step scales all the work that remains (pruning, token merging),
      the stack's time is T * prod_p (1 - f_p), so S = prod_p S_p.
    * **Amdahl** (``predicted_amdahl``): when each step speeds only its own part of the work and the parts do not
      overlap (int8 speeds the linear layers; a step that thins attention speeds the rest), the shares saved add:
      S = 1 / (1 - sum_p f_p), infinite where they reach 1 (then NaN here).
    Whether the stack matches a prediction is read round by round: in each round the stack's ratio to ``base`` is
    divided by that round's prediction from the parts' ratios, so the parts' noise counts as well as the stack's;
    ``vs_product`` and ``vs_amdahl`` are the medians of those quotients with their 95% intervals (``_low``,
    ``_high``); ``adds_up_speed`` and ``adds_up_amdahl`` say whether the interval holds 1.
    ``adds_up_top1``: the predicted top-1 lies within two standard errors of the measured one."""
    for name in (stack, base, *parts):
        if name not in board.index:
            raise KeyError(f"{name!r} is not on the board: {list(board.index)}.")
    speedups = [timings.ratio(p, base).median for p in parts]
    predicted_speed = float(np.prod(speedups))
    saved = sum(1.0 - 1.0 / s for s in speedups)
    predicted_amdahl = 1.0 / (1.0 - saved) if saved < 1 else math.nan
    measured = timings.ratio(stack, base)
    product_rounds, amdahl_rounds = [], []
    for k in range(timings.rounds):
        stack_k = timings.rates[stack][k] / timings.rates[base][k]
        part_k = [timings.rates[p][k] / timings.rates[base][k] for p in parts]
        product_rounds.append(stack_k / float(np.prod(part_k)))
        saved_k = sum(1.0 - 1.0 / r for r in part_k)
        amdahl_rounds.append(stack_k * (1.0 - saved_k) if saved_k < 1 else math.nan)
    quotient = metrics.Interval.of(product_rounds, timings.level, timings.resolution)
    if all(math.isfinite(q) for q in amdahl_rounds):
        amdahl = metrics.Interval.of(amdahl_rounds, timings.level, timings.resolution)
        vs_amdahl = (amdahl.median, amdahl.low, amdahl.high, not amdahl.excludes(1.0))
    else:
        vs_amdahl = (math.nan, math.nan, math.nan, False)
    top1_base = float(board.loc[base, "top1"])
    predicted_top1 = top1_base + sum(float(board.loc[p, "top1"]) - top1_base for p in parts)
    measured_top1 = float(board.loc[stack, "top1"])
    se = metrics.top1_se(measured_top1, int(board.loc[stack, "n_test"]))
    return {"speedup": measured.median, "speedup_low": measured.low, "speedup_high": measured.high,
            "predicted_speedup": predicted_speed, "vs_product": quotient.median, "vs_product_low": quotient.low,
            "vs_product_high": quotient.high, "adds_up_speed": not quotient.excludes(1.0),
            "predicted_amdahl": predicted_amdahl, "vs_amdahl": vs_amdahl[0], "vs_amdahl_low": vs_amdahl[1],
            "vs_amdahl_high": vs_amdahl[2], "adds_up_amdahl": vs_amdahl[3],
            "top1": measured_top1, "predicted_top1": predicted_top1,
            "adds_up_top1": abs(measured_top1 - predicted_top1) <= 2 * se}


def _own_rows(stem: str, method: str, setting: str | None, profile: str, column: str) -> pd.DataFrame:
    """The rows notebook ``stem`` wrote for ``method`` (at ``setting``) in ``profile`` with a ``column`` value, oldest
    first. ``setting`` None matches any setting, and is refused (ValueError) where the method's rows carry more than
    one: a notebook that sweeps a setting (training length, bit width) writes the same method under each, and the
    newest row would be whichever the sweep wrote last, not the one meant."""
    frame = results.read(stem)
    if column not in frame.columns:
        return frame.iloc[0:0]
    rows = frame[(frame["profile"] == profile) & (frame["method"] == method)]
    if setting is not None:
        rows = rows[rows["setting"] == setting]
    elif "setting" in rows.columns and rows["setting"].dropna().nunique() > 1:
        raise ValueError(f"{stem} holds {method!r} in the {profile} profile under several settings "
                         f"({', '.join(map(repr, rows['setting'].dropna().unique()))}); name the one to read.")
    return rows.dropna(subset=[column])


def own_result(stem: str, method: str, setting: str | None, profile: str, column: str = "top1",
               seeds: Sequence[int] | None = None) -> float | None:
    """The newest ``column`` value that notebook ``stem`` wrote for ``method`` (and ``setting``; None: any, where the
    method has only one) in ``profile``, or None where that notebook has not measured it in this profile. Rows are
    appended in order, so the last matching row is the newest.

    With ``seeds`` (a model trained at several seeds, one row per seed in an int ``seed`` column): the mean over
    those seeds of each seed's newest row (:func:`own_seed_results`), so it reads the same number the leaderboard
    shows; None unless every seed has a row."""
    if seeds:
        values = own_seed_results(stem, method, setting, profile, seeds, column)
        return None if values is None else float(np.mean(values))
    rows = _own_rows(stem, method, setting, profile, column)
    return None if rows.empty else float(rows[column].iloc[-1])


def own_seed_results(stem: str, method: str, setting: str | None, profile: str, seeds: Sequence[int],
                     column: str = "top1") -> list[float] | None:
    """Each of ``seeds``' newest ``column`` value for ``method`` at ``setting`` in ``profile``, in the seeds' order,
    or None unless every seed has a row: what a seed spread or a comparison over seeds needs. ``setting`` as in
    :func:`own_result`."""
    rows = _own_rows(stem, method, setting, profile, column)
    if "seed" not in rows.columns:
        return None
    newest = []
    for s in seeds:
        mine = rows[pd.to_numeric(rows["seed"], errors="coerce") == int(s)]
        if mine.empty:
            return None
        newest.append(float(mine[column].iloc[-1]))
    return newest


# --------------------------------------------------------------------------- ranking


FRONTS = {"MACs": ("macs", "min"), "throughput": ("speedup", "max"), "bytes": ("bytes", "min")}
"""The Pareto fronts of the leaderboard: top-1 against each of these costs."""


FRONT_INTERVALS = {"speedup": ("speedup_low", "speedup_high")}
"""The costs measured with an interval: a front member that dominates another only within it is uncertain."""


def pareto_fronts(board: pd.DataFrame) -> pd.DataFrame:
    """Two columns per entry of :data:`FRONTS`: whether the model is on the front of top-1 against that cost
    (medians; a model without that cost, e.g. an untimed one for throughput, is on no front of it), and whether
    that membership is uncertain because it rests on differences inside the timing's intervals
    (:func:`vitsurvey.metrics.uncertain_front`)."""
    columns = {}
    for label, (column, direction) in FRONTS.items():
        objectives = {"top1": "max", column: direction}
        intervals = {c: b for c, b in FRONT_INTERVALS.items() if c == column and set(b) <= set(board.columns)}
        columns[f"front: {label}"] = metrics.pareto_front(board, objectives)
        columns[f"uncertain: {label}"] = metrics.uncertain_front(board, objectives, intervals)
    return pd.DataFrame(columns)


def eer_ranking(board: pd.DataFrame, weights: Mapping[str, float], reference: str | Mapping[str, float],
                form: str = "arithmetic") -> pd.Series:
    """Ranks (1 = best) by :func:`vitsurvey.metrics.efficient_error_rate` with ``weights`` over the cost
    columns and ``"error"`` (100 - top-1), ratios taken to ``reference`` (a row, "max", "min" or values), in the
    arithmetic or geometric ``form``."""
    frame = board.assign(error=100 - board["top1"].astype(float))
    costs = {c: w for c, w in weights.items() if c != "error"}
    eer = metrics.efficient_error_rate(frame, costs, "error", weights.get("error", 1.0), reference=reference,
                                       form=form)
    return eer.rank(method="min")


def eer_sensitivity(
    board: pd.DataFrame,
    costs: Sequence[str] = ("params", "macs", "bytes"),
    reference: str = "baseline",
    references: Sequence[str] | None = None,
    draws: int = 1000,
    seed: int = 0,
    forms: Sequence[str] = ("arithmetic", "geometric"),
) -> pd.DataFrame:
    """How much the EER ranking moves when its weights and reference move, in each of its ``forms``.

    The default ranking weighs ``costs`` and the error equally, as ratios to ``reference``. Each draw
    picks weights from a flat Dirichlet distribution (every weighting of the features equally likely) and a
    reference among ``references`` (default: every row), and compares its ranking with the default by
    Kendall's tau (scipy; 1: the same order, 0: unrelated). One row per draw and form: ``form``, ``tau``, ``top``
    (the best model of that draw), the reference and the weights; every form meets the same draws. S2's exact
    formula is not published, so both readings are tried: the arithmetic mean of ratios (whose ranking moves with
    the reference) and the geometric mean (whose ranking does not, so only the weights move it). Rows missing a
    cost or the top-1 are left out.
    """
    from scipy.stats import kendalltau

    checks.whole("draws", draws, 1)
    features = [*costs, "error"]
    usable = board.dropna(subset=[*costs, "top1"])
    if len(usable) < 2:
        raise ValueError(f"An EER ranking needs at least two rows with {list(costs)} and top1; got {len(usable)}.")
    if reference not in usable.index:
        raise KeyError(f"The reference {reference!r} is not among the ranked rows: {list(usable.index)}.")
    pool = list(references or usable.index)
    missing = [r for r in pool if r not in usable.index]
    if missing:
        raise KeyError(f"References {missing} are not among the ranked rows: {list(usable.index)}.")
    defaults = {form: eer_ranking(usable, dict.fromkeys(features, 1.0), reference, form) for form in forms}
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(draws):
        w = dict(zip(features, rng.dirichlet(np.ones(len(features)))))
        ref = pool[int(rng.integers(len(pool)))]
        for form, default in defaults.items():
            ranks = eer_ranking(usable, w, ref, form)
            tau = kendalltau(default.to_numpy(), ranks.to_numpy()).statistic
            rows.append({"form": form, "tau": float(tau), "top": str(ranks.idxmin()), "reference": ref,
                         **{f"w {f}": float(v) for f, v in w.items()}})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the results file


def save(board: pd.DataFrame, profile: str, device: str | torch.device | None = None,
         extra: Mapping[str, object] | None = None) -> tuple[Path, Path]:
    """Append ``board`` to ``data/results/12_leaderboard.csv`` as one run (a shared ``run`` time stamp) and
    write the sortable HTML table of that run beside it; returns both paths. ``extra`` adds columns to
    every row (data set, ...)."""
    if board.empty:
        raise ValueError("The leaderboard is empty: measure at least one model first.")
    run = _dt.datetime.now().isoformat(timespec="seconds")
    labels = board.reindex(columns=["steps", "family"]).astype(object).fillna("")
    rows = [{"method": name, "setting": labels.loc[name, "steps"] or labels.loc[name, "family"], **r, "model": name,
             "run": run, **(extra or {})} for name, r in board.to_dict("index").items()]
    path = results.append(STEM, rows, profile, device)
    html = write_html(read(profile), path.with_suffix(".html"),
                      title=f"vitsurvey leaderboard ({profile} profile, {run})")
    return path, html


def write_html(board: pd.DataFrame, path: Path, title: str) -> Path:
    """A sortable, searchable HTML page of ``board`` (itables: DataTables, loaded by the browser from the
    web), written atomically."""
    import html as _html

    from itables import to_html_datatable

    table = to_html_datatable(board.reset_index(), connected=True, display_logo_when_loading=False,
                              classes="display compact", pageLength=50)
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{_html.escape(title)}</title></head>\n"
            f"<body>\n<h1>{_html.escape(title)}</h1>\n<p>Click a column to sort; measured with the protocol of "
            "notebook 12 (top-1 ± one standard error on one test set; speed-up from one interleaved timing run, "
            "median with its 95% interval).</p>\n" + table + "\n</body></html>\n")
    results.write_text_atomic(page, path)
    return path


class NoResults(LookupError):
    """The leaderboard has not been measured (in the profile asked for)."""


def read(profile: str | None = None) -> pd.DataFrame:
    """The newest run of the leaderboard in ``data/results/12_leaderboard.csv`` (of ``profile``, if given;
    else of the profile measured last), indexed by model."""
    path = results.results_dir() / f"{STEM}.csv"
    hint = "measure it first: python -m vitsurvey run 12 --profile cpu"
    if not path.exists():
        raise NoResults(f"No leaderboard results yet ({path.name} does not exist); {hint}.")
    frame = results.current(results.read_file(path))
    needed = {"model", "run", "profile"}
    if not needed <= set(frame.columns):
        raise NoResults(f"{path.name} lacks the column(s) {sorted(needed - set(frame.columns))}: it was not written "
                        f"by the leaderboard; {hint}.")
    if profile is not None:
        if profile not in set(frame["profile"]):
            have = ", ".join(sorted(set(frame["profile"].dropna().astype(str)))) or "none"
            raise NoResults(f"No leaderboard results for the {profile!r} profile (profiles measured: {have}); "
                            f"measure it: python -m vitsurvey run 12 --profile {profile}.")
        frame = frame[frame["profile"] == profile]
    newest = frame.sort_values("run")["run"].iloc[-1]
    return frame[frame["run"] == newest].set_index("model")


def format_board(board: pd.DataFrame, sort: str | None = None) -> str:
    """The leaderboard as text, one line per model, best first by ``sort`` (any measured column; default
    top-1; costs ascending, accuracy and speed descending). Values a row lacks (a model that was not timed,
    a results file from an older run) show as n/a."""
    sortable = [c for c in COLUMNS if c != "model" and c in board.columns]
    sort = sort or "top1"
    if sort not in sortable:
        raise ValueError(f"Cannot sort by {sort!r}; choose one of: {', '.join(sortable)}.")
    descending = sort.startswith(("top1", "speedup", "throughput"))
    rows = board.sort_values(sort, ascending=not descending, na_position="last")

    def get(r: pd.Series, c: str) -> object:
        return r[c] if c in r.index and pd.notna(r[c]) else None

    def count(v: object) -> str:
        return "n/a" if v is None else f"{int(float(v)):,}"  # type: ignore[arg-type]

    def number(v: object, digits: int = 2) -> str:
        return "n/a" if v is None else f"{float(v):.{digits}f}"  # type: ignore[arg-type]

    lines = {}
    for name, r in rows.iterrows():
        change, verdict = get(r, "top1_vs_control"), get(r, "accuracy_vs_control")
        speed = get(r, "speedup")
        lines[name] = {
            "family": get(r, "family") or "",
            "top-1 (%)": "n/a" if get(r, "top1") is None else f"{number(r['top1'])} ± {number(get(r, 'top1_se'))}",
            "seed std": number(get(r, "top1_seed_std")), "seeds": get(r, "seeds") or "",
            "vs control": "" if change is None else f"{float(change):+.2f} ({verdict}, vs {get(r, 'control')})",
            "params": count(get(r, "params")), "MACs": count(get(r, "macs")), "bytes": count(get(r, "bytes")),
            "memory (bytes)": count(get(r, "infer_mem_bytes")),
            "speed-up [95% CI]": "n/a" if speed is None else
            f"{number(speed)} [{number(get(r, 'speedup_low'))}-{number(get(r, 'speedup_high'))}]",
            "verdict": get(r, "verdict") or "not timed",
        }
    return pd.DataFrame.from_dict(lines, orient="index").to_string()


def describe_run(board: pd.DataFrame) -> str:
    """One line: which profile, device and date the rows come from."""
    first = board.iloc[0]
    parts = [f"{first.get(k)}" for k in ("profile", "device", "run") if k in board and pd.notna(first.get(k))]
    return "measured: " + "; ".join(parts) if parts else "measured: (no context recorded)"

