"""Test-wide settings, for unit tests and for the kernels nbval starts (they inherit os.environ).

Notebooks run in the smoke profile, offline, and write their results, figures and checkpoints into a
temporary directory instead of the repository's committed data/results; the directory is removed when the
test run ends. Fixtures shared by the unit tests live in ``tests/conftest.py``.
"""

import atexit
import os
import shutil
import tempfile

_OUTPUT = tempfile.mkdtemp(prefix="vitsurvey-test-output-")
atexit.register(shutil.rmtree, _OUTPUT, ignore_errors=True)
os.environ["VITSURVEY_PROFILE"] = "smoke"
os.environ["VITSURVEY_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["VITSURVEY_OUTPUT"] = _OUTPUT
os.makedirs(os.path.join(_OUTPUT, "data", "results"), exist_ok=True)
