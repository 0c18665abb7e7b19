"""vitsurvey: the executable companion to five papers on efficient Vision Transformers.

Importing the package first makes ``import timm`` work under a CPU-only torch with a CUDA-built
torchvision (see :mod:`vitsurvey._compat`); where the builds match it changes nothing.

Modules, in the direction data flows: :mod:`~vitsurvey.data` -> :mod:`~vitsurvey.models` ->
:mod:`~vitsurvey.train` / :mod:`~vitsurvey.measure` -> :mod:`~vitsurvey.results` ->
:mod:`~vitsurvey.plots`; :mod:`~vitsurvey.profiles` sizes all of them.
"""

from . import _compat

_compat.ensure_torchvision_importable()

__version__ = "0.1.0"

import warnings as _warnings

# tqdm.auto (imported by timm's dependencies) warns in kernels without ipywidgets; the text bar it
# falls back to is what we want, so the warning is noise in every notebook.
_warnings.filterwarnings("ignore", message="IProgress not found")
