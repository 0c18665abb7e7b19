"""Binder builds what CI tests: a fresh environment from binder/ alone starts the tour and JupyterLab."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_binder_installs_the_tested_set_with_pip():
    """repo2docker uses binder/ before the root; runtime.txt plus requirements.txt make it build with pip, so the
    constraints CI tests are what a launch gets (a conda environment.yml there would take precedence and resolve
    open ranges instead)."""
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"
    assert not (BINDER / "environment.yml").exists() and not (BINDER / "environment.yaml").exists()
    lines = [ln.strip() for ln in (BINDER / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert "-c ../constraints.txt" in lines and "-e ." in lines
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert os.access(BINDER / "postBuild", os.X_OK)
    assert "torch" in _pins() and "jupyterlab" in _pins()


@pytest.mark.slow
def test_a_binder_build_starts_the_tour(tmp_path):
    """As repo2docker would build this repository, without docker: a fresh virtual environment with Python 3.11,
    `pip install -r binder/requirements.txt` from the repository root, postBuild, then the tour executed with
    papermill (smoke profile) and `jupyter lab --version` answering; the installed versions are the pins."""
    python = shutil.which("python3.11") or (sys.executable if sys.version_info[:2] == (3, 11) else None)
    if python is None:
        pytest.skip("Binder's runtime is Python 3.11, which this machine lacks")
    env_dir = tmp_path / "binder-env"
    subprocess.run([python, "-m", "venv", str(env_dir)], check=True)
    bin_dir = env_dir / "bin"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(env_dir),
           "PIP_RETRIES": "1", "VITSURVEY_PROFILE": "smoke", "VITSURVEY_OUTPUT": str(tmp_path / "results"),
           "MPLCONFIGDIR": str(tmp_path / "mpl")}
    env.pop("PYTHONPATH", None)

    def run(*cmd: str, timeout: int = 1800) -> str:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    run(str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "-r", "binder/requirements.txt")
    run("bash", "binder/postBuild")
    installed = dict(line.split("==", 1) for line in run(str(bin_dir / "python"), "-m", "pip", "freeze").splitlines()
                     if "==" in line)
    for name in ("torch", "timm", "torchao", "jupyterlab", "papermill", "pandas"):
        pin = _pins()[name]
        got = installed.get(name, installed.get(name.replace("-", "_"), "missing"))
        assert got.split("+")[0] == pin, f"Binder installed {name} {got}, CI tests {pin}"
    assert not any(k.lower().startswith("nvidia-") for k in installed), "CUDA packages in a CPU Binder image"
    out = tmp_path / "tour.ipynb"
    run(str(bin_dir / "papermill"), "notebooks/00_tour.ipynb", str(out), "-k", "python3", "--cwd", "notebooks",
        "-p", "profile", "smoke")
    assert out.stat().st_size > 0
    assert run(str(bin_dir / "jupyter"), "lab", "--version").strip()[0].isdigit()
