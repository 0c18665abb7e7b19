"""One house style for every figure, and ``savefig`` into ``figures/``.

Colours come from the Okabe-Ito palette (distinguishable with the common colour-vision
deficiencies). Figures have an opaque white background so they stay readable when JupyterLab or
GitHub shows them on a dark theme.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt

from .results import project_root

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


def figures_dir() -> Path:
    return project_root() / "figures"


def savefig(fig: plt.Figure, name: str) -> Path:
    """Save ``fig`` as ``figures/<name>.png`` (opaque background) and return the path."""
    path = figures_dir() / f"{Path(name).stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight", facecolor="white")
    return path
