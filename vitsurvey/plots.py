"""One house style for every figure, and ``savefig`` into ``figures/``.

Colours come from the Okabe-Ito palette (distinguishable with the common colour-vision
deficiencies). Figures have an opaque white background so they stay readable when JupyterLab or
GitHub shows them on a dark theme.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from .paths import figures_dir

__all__ = [
    "OKABE_ITO", "figures_dir", "label_points", "log_axis", "pareto", "savefig", "use_style",
]

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


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
        axis.set_major_formatter(ScalarFormatter())
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
    """Name points (by ``label`` column, else the index), skipping a name that would overprint one
    already placed (the point stays). Call after the axes' scales are set."""
    placed: list[tuple[float, float]] = []
    ax.autoscale_view()  # display coordinates below must use the final data limits
    for _, row in rows.iterrows():
        px, py = ax.transData.transform((row[x], row[y]))
        if any(abs(px - qx) < 90 and abs(py - qy) < 11 for qx, qy in placed):
            continue
        placed.append((px, py))
        text = row.name if label is None else row[label]
        ax.annotate(str(text), (row[x], row[y]), textcoords="offset points", xytext=(3, 3), fontsize=7)
