"""One house style for every figure, and ``savefig`` into ``figures/``.

Colours come from the Okabe-Ito palette (distinguishable with the common colour-vision
deficiencies). One colour per strategy family in every notebook (:data:`FAMILY_COLOURS`: the baseline black, its
controls grey, a composition of strategies a colour of its own), and within a family one shade per model
(:func:`colours`), so a model reads the same in every figure. Labels are placed by adjustText, so they never overlap
(:func:`label_points`). Figures have an opaque white background so they stay readable when JupyterLab or
GitHub shows them on a dark theme.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .paths import figures_dir

__all__ = [
    "FAMILY_COLOURS", "OKABE_ITO", "colours", "family_of", "figures_dir", "label_points", "log_axis", "pareto",
    "savefig", "use_style",
]

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]

FAMILY_COLOURS = {
    "baseline": "#000000", "control": "#8C8C8C", "pruning": OKABE_ITO[0], "token reduction": OKABE_ITO[1],
    "distillation": OKABE_ITO[2], "quantization": OKABE_ITO[3], "compact mixer": OKABE_ITO[4],
    "multiplexing": OKABE_ITO[5], "composition": "#8B5A2B",
}
"""One colour per strategy family, the same in every notebook; the baseline and a composition never share one."""

_FAMILY_WORDS = (  # the first match wins: a stack is a composition whatever its parts are
    ("composition", ("->", "stack")),
    ("control", ("control", "fine-tune", "no teacher", "labels only", "mixer budget", "multiplex budget", "fp32")),
    ("baseline", ("baseline", "dense", "unpruned", "vit-", "plain vit")),
    ("pruning", ("prun", "magnitude", "structured", "sparse", "head")),
    ("token reduction", ("tome", "evit", "slimming", "token", "merge")),
    ("distillation", ("student", "teacher", "distil", "soft", "hard")),
    ("quantization", ("ptq", "qat", "int8", "fp8", "w8", "w4", "w6", "quant", "bit")),
    ("multiplexing", ("multiplex", "concatplexer", "im ", "cp ", "n=")),
    ("compact mixer", ("mixer", "window", "linear", "low-rank", "lowrank", "pool", "fourier", "conv", "attention")),
)


def family_of(name: str) -> str:
    """The strategy family a model's name belongs to (:data:`FAMILY_COLOURS`), read from the words it uses; a name
    no rule knows is ``"baseline"``. Pass families explicitly to :func:`colours` where names say too little."""
    lowered = f"{name.lower()} "
    for family, words in _FAMILY_WORDS:
        if any(w in lowered for w in words):
            return family
    return "baseline"


def _shade(colour: str, t: float) -> str:
    """``colour`` moved a fraction ``t`` of the way to white (t in [0, 1))."""
    r, g, b = mpl.colors.to_rgb(colour)
    return mpl.colors.to_hex((r + (1 - r) * t, g + (1 - g) * t, b + (1 - b) * t))


def colours(names: list[str], families: dict[str, str] | None = None) -> dict[str, str]:
    """A colour for each model: its family's colour (:data:`FAMILY_COLOURS`; ``families`` overrides the guess of
    :func:`family_of`), the first model of a family at full strength and later ones lighter, so models of one family
    stay apart and every family stays recognisable. The same names give the same colours in every figure."""
    by_family: dict[str, list[str]] = {}
    for n in names:
        fam = (families or {}).get(n) or family_of(n)
        if fam not in FAMILY_COLOURS:
            raise ValueError(f"Unknown family {fam!r} for {n!r}; use one of {', '.join(FAMILY_COLOURS)}.")
        by_family.setdefault(fam, []).append(n)
    out = {}
    for fam, members in by_family.items():
        step = 0.55 / max(len(members) - 1, 1)
        for k, n in enumerate(members):
            out[n] = _shade(FAMILY_COLOURS[fam], k * step) if k else FAMILY_COLOURS[fam]
    return {n: out[n] for n in names}


def use_style() -> None:
    """Apply the house style to matplotlib (and seaborn, which draws through it)."""
    mpl.rcParams.update({
        "figure.figsize": (6.4, 4.0),
        "figure.dpi": 100,
        "savefig.dpi": 150,
        "figure.facecolor": "white",
        "savefig.facecolor": "white",
        "axes.facecolor": "white",
        "axes.edgecolor": "#333333",
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.prop_cycle": mpl.cycler(color=OKABE_ITO),
        "font.size": 10,
        "legend.frameon": False,
        "text.color": "black",
        "axes.labelcolor": "black",
        "xtick.color": "black",
        "ytick.color": "black",
    })


def savefig(fig: plt.Figure, name: str) -> Path:
    """Save ``fig`` as ``figures/<name>.png`` (opaque background) and return the path."""
    path = figures_dir() / f"{Path(name).stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight", facecolor="white")
    return path


def log_axis(ax: plt.Axes, which: str = "x") -> None:
    """Logarithmic axes (``"x"``, ``"y"`` or ``"both"``) labelled at 1, 2 and 5 x 10^k in plain numbers."""
    for name in ("x", "y") if which == "both" else (which,):
        axis = ax.xaxis if name == "x" else ax.yaxis
        getattr(ax, f"set_{name}scale")("log")
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.02, not "0.0"
        axis.set_minor_formatter(NullFormatter())


def pareto(
    ax: plt.Axes,
    frame: pd.DataFrame,
    x: str,
    y: str,
    x_dir: str,
    y_dir: str = "max",
    label: str | None = None,
    highlight: pd.Series | None = None,
    log_x: bool = False,
) -> pd.Series:
    """Scatter ``y`` against ``x``, draw the Pareto front as a step line and name its points.

    ``x_dir``/``y_dir`` say which way is better (``"min"`` or ``"max"``); ``highlight`` marks some
    rows (e.g. the plain ViTs) with a different marker. Returns the front (a boolean Series).
    """
    from .metrics import pareto_front

    data = frame.dropna(subset=[x, y])
    front = pareto_front(data, {x: x_dir, y: y_dir})
    others = data[~front]
    ax.scatter(others[x], others[y], s=18, color="#999999", label="dominated")
    on = data[front].sort_values(x)
    ax.step(on[x], on[y], where="post" if x_dir == "min" else "pre", color=OKABE_ITO[0], lw=1, alpha=0.7)
    ax.scatter(on[x], on[y], s=30, color=OKABE_ITO[0], label="Pareto-optimal", zorder=3)
    if highlight is not None:
        marked = data[highlight.reindex(data.index, fill_value=False)]
        ax.scatter(marked[x], marked[y], s=70, facecolors="none", edgecolors=OKABE_ITO[3], lw=1.5,
                   label="ViT (plain)", zorder=4)
    if log_x:
        log_axis(ax, "x")
    if label is not None:
        label_points(ax, on, x, y, label)
    return front.reindex(frame.index, fill_value=False)


def label_points(ax: plt.Axes, rows: pd.DataFrame, x: str, y: str, label: str | None = None) -> None:
    """Name every point (by ``label`` column, else the index), the labels moved by adjustText until none overlaps
    another or a point, each joined to its point by a thin line where it had to move. Call after the axes' scales
    are set."""
    from adjustText import adjust_text

    ax.autoscale_view()
    texts = [ax.text(row[x], row[y], str(row.name if label is None else row[label]), fontsize=7)
             for _, row in rows.iterrows()]
    if texts:
        adjust_text(texts, x=list(rows[x]), y=list(rows[y]), ax=ax,
                    arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5})
