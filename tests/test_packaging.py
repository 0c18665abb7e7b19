"""The install files agree with each other and keep CUDA off CPU machines."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _conda_deps(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    start = lines.index("dependencies:") + 1
    return [ln.strip() for ln in lines[start:] if ln.startswith("  - ") and not ln.strip().startswith("- pip:")]


CONDA_NAMES = {"torch": "pytorch-cpu", "matplotlib": "matplotlib-base"}
"""conda-forge's names for the CPU builds of what PyPI calls otherwise."""


def _pyproject_deps() -> dict[str, str]:
    """Every dependency of the package and its dev extra, as conda would name it -> its version range."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {}
    for req in project["dependencies"] + project["optional-dependencies"]["dev"]:
        name, spec = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", req).groups()
        out[CONDA_NAMES.get(name.lower(), name.lower())] = spec.replace(" ", "")
    return out


def test_the_conda_environment_agrees_with_pyproject_on_every_dependency():
    import re

    wanted = _pyproject_deps()
    for env in (ROOT / "environment.yml",):
        listed = {}
        for dep in _conda_deps(env):
            name, spec = re.match(r"- ([A-Za-z0-9_.-]+)\s*(.*)", dep).groups()
            listed[name] = spec
        listed.pop("python"), listed.pop("pip")
        assert listed == wanted, f"{env.relative_to(ROOT)} differs from pyproject.toml: " + ", ".join(
            f"{k}: {listed.get(k, 'missing')} vs {wanted.get(k, 'missing')}"
            for k in sorted(set(listed) | set(wanted)) if listed.get(k) != wanted.get(k))


def test_constraints_pin_every_dependency():
    pins = {line.split("==")[0].lower() for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line and not line.startswith("#")}
    inverse = {v: k for k, v in CONDA_NAMES.items()}
    missing = sorted(inverse.get(n, n) for n in _pyproject_deps() if inverse.get(n, n) not in pins)
    assert not missing, f"constraints.txt pins no version of {missing}"


def test_constraints_pin_a_portable_torch():
    pins = dict(
        line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert pins["torch"] == "2.13.0", "pin torch without a local '+cpu' tag (it exists on no public index)"
    assert pins["torchvision"] == "0.28.0"
    for needed in ("timm", "fvcore", "jupyterlab", "ipykernel", "matplotlib", "seaborn", "pandas", "nbval", "papermill"):
        assert needed in pins


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make run" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_committed_notebooks_are_runnable_in_any_profile():
    """Each notebook has a python3 kernelspec and a `parameters` cell, and no papermill-injected cell
    that would pin a profile over $VITSURVEY_PROFILE (nbval runs them in the smoke profile)."""
    import nbformat

    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert notebooks
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        tags = [t for c in nb.cells for t in c.metadata.get("tags", [])]
        assert nb.metadata["kernelspec"]["name"] == "python3", path.name
        assert "parameters" in tags, path.name
        assert "injected-parameters" not in tags, path.name


def test_committed_notebooks_name_no_directory_of_the_machine_that_ran_them():
    """papermill records where it read and wrote a notebook; `python -m vitsurvey run` keeps file names only."""
    import nbformat

    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        pm = nbformat.read(path, as_version=4).metadata.get("papermill", {})
        for key in ("input_path", "output_path"):
            assert pm.get(key) in (None, path.name), (path.name, key, pm.get(key))


def test_ci_installs_no_data_set_and_the_package_ships_its_own():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "dataset-" not in ci.replace("# ", "#").split("need=()")[1], "CI must not install a data set package"
    import tomllib

    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = sorted(p.name for p in (ROOT / "vitsurvey" / "embedded" / "fashion-mnist-subset").iterdir())
    assert "embedded/fashion-mnist-subset/*" in package_data["vitsurvey"]
    assert {"README.md", "selection.csv", "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"} <= set(shipped)
    size = sum(p.stat().st_size for p in (ROOT / "vitsurvey" / "embedded").rglob("*"))
    assert size < 5 * 2**20, "the shipped subset must stay small enough for the repository"
