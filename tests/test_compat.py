import pytest
import subprocess
import sys

from vitsurvey import _compat

pytestmark = pytest.mark.slow  # starts processes


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_timm_imports_after_vitsurvey():
    proc = _run("import vitsurvey, timm, torchvision; print(vitsurvey._compat.STATE); "
                "print(timm.create_model('vit_tiny_patch16_224').num_classes)")
    assert proc.returncode == 0, proc.stderr
    state, classes = proc.stdout.splitlines()
    assert state in ("native", "schemas defined")
    assert classes == "1000"


def test_fix_is_needed_exactly_when_applied():
    """Where the fix defines schemas, plain torchvision fails without it; where builds match, it
    imports on its own and the fix does nothing."""
    state = _run("import vitsurvey; print(vitsurvey._compat.STATE)").stdout.strip()
    plain = _run("import torchvision")
    if state == "schemas defined":
        assert plain.returncode != 0
        assert "torchvision::nms" in plain.stderr
    else:
        assert state == "native"
        assert plain.returncode == 0, plain.stderr


def test_idempotent():
    first = _compat.ensure_torchvision_importable()
    assert _compat.ensure_torchvision_importable() == first
