import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from vitsurvey.__main__ import main

ROOT = Path(__file__).resolve().parent.parent


def test_doctor(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for text in ("torch", "timm", "fashion_mnist", "'auto' picks: smoke"):
        assert text in out


def test_profile_json(capsys):
    assert main(["profile", "vit_tiny_patch16_224", "--profile", "smoke", "--batch-size", "2", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["params"] == 5_717_416
    assert record["macs"] == record["analytic_macs"] == 1_258_411_200
    assert record["batch_size"] == 2 and record["throughput_img_s"] > 0


def test_profile_img_size(capsys):
    assert main(["profile", "vit_tiny_patch16_224", "--img-size", "32", "--profile", "smoke", "--batch-size", "1"]) == 0
    assert "at 32 px" in capsys.readouterr().out


def test_profile_img_size_of_a_cnn(capsys):
    # ResNet-50's constructor takes no img_size; it runs at any size as built
    assert main(["profile", "resnet50", "--img-size", "64", "--profile", "smoke", "--batch-size", "1"]) == 0
    assert "resnet50 at 64 px" in capsys.readouterr().out


def test_doctor_says_which_data_each_profile_uses(tmp_path, monkeypatch, capsys):
    from vitsurvey import data

    monkeypatch.setenv(data.ENV_ROOT, str(tmp_path))
    monkeypatch.setenv(data.ENV_OFFLINE, "1")
    monkeypatch.setattr(data, "DEBIAN_DATASETS", tmp_path / "nothing-here")
    assert main(["doctor"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[-4:-1]}
    assert "subset" in lines["smoke"] and "subset" in lines["cpu"] and "not found" in lines["cpu"]


def test_profile_unknown_model(capsys):
    assert main(["profile", "vit_tiny_patch16_2", "--profile", "smoke"]) == 2
    assert "Did you mean: vit_tiny_patch16_224" in capsys.readouterr().err


def test_profile_unknown_profile(capsys):
    assert main(["profile", "vit_tiny_patch16_224", "--profile", "huge"]) == 2
    assert "Valid profiles" in capsys.readouterr().err


def _notebook(path, sources, heading=None):
    """A notebook of code cells, the first tagged ``parameters``; after a markdown ``heading`` if given."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.cells[0].metadata["tags"] = ["parameters"]
    if heading:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(heading))
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_run_executes_and_passes_the_profile(tmp_path, capsys):
    src = tmp_path / "01_ok.ipynb"
    _notebook(src, ['profile = "auto"', "print('profile is', profile)"])
    out = tmp_path / "out"
    assert main(["run", str(src), "--profile", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[1/1] 01_ok ... done" in printed and "expected: unknown" in printed
    executed = nbformat.read(out / "01_ok.ipynb", as_version=4)
    assert "profile is cpu" in executed.cells[-1].outputs[0]["text"]
    # papermill's record of where it read and wrote keeps file names, not this machine's directories
    paths = {k: executed.metadata["papermill"][k] for k in ("input_path", "output_path")}
    assert paths == {"input_path": "01_ok.ipynb", "output_path": "01_ok.ipynb"}
    assert str(tmp_path) not in (out / "01_ok.ipynb").read_text()


def test_run_says_how_long_it_should_take_from_the_stored_runs(tmp_path):
    from vitsurvey import notebooks

    paths = []
    for name, meta in (("01_a", {"duration": 600.0, "parameters": {"profile": "cpu"}}),
                       ("02_b", {"duration": 300.0, "parameters": {"profile": "cpu"}}),
                       ("03_c", {"duration": 50.0, "parameters": {"profile": "smoke"}}),
                       ("04_d", None)):
        path = _notebook(tmp_path / f"{name}.ipynb", ["x = 1"])
        if meta is not None:
            nb = nbformat.read(path, as_version=4)
            nb.metadata["papermill"] = meta
            nbformat.write(nb, path)
        paths.append(path)
    assert notebooks.expected_seconds(paths, "cpu") == (900.0, ["03_c", "04_d"])
    assert notebooks.expected_seconds(paths, "smoke") == (50.0, ["01_a", "02_b", "04_d"])
    assert notebooks.expected_seconds(paths, "gpu") == (0.0, ["01_a", "02_b", "03_c", "04_d"])


def test_a_finished_run_is_recorded_and_stamped_in_the_header(tmp_path):
    from vitsurvey import notebooks

    heading = ("# 01\n\n**Time:** smoke: 1.0 minute on 2 cores (measured by papermill on 2026-01-01); "
               "cpu: 3.0 minutes on 2 cores (measured by papermill on 2026-01-01), training included.")
    path = _notebook(tmp_path / "01_a.ipynb", ["x = 1"], heading=heading)
    nb = nbformat.read(path, as_version=4)
    nb.metadata["papermill"] = {"duration": 754.2, "start_time": "2026-12-05T01:34:11.5+00:00", "parameters": {}}
    notebooks.record_run(nb, "cpu", cores=2)
    header = nb.cells[0].source
    assert "cpu: 12.6 minutes on 2 cores (measured by papermill on 2026-12-05), training included." in header
    assert "smoke: 1.0 minute on 2 cores (measured by papermill on 2026-01-01)" in header  # another profile: kept
    assert nb.metadata["vitsurvey"] == {"profile": "cpu", "seconds": 754.2, "cores": 2, "date": "2026-12-05"}
    nbformat.write(nb, path)
    # a run recorded without papermill's profile parameter (make run: the notebooks choose) still counts
    assert notebooks.expected_seconds([path], "cpu") == (754.2, [])
    assert notebooks.expected_seconds([path], "smoke") == (0.0, ["01_a"])
    one = notebooks.time_phrase("cpu", 60.0, 1, "2026-12-05")
    assert one == "cpu: 1.0 minute on 1 core (measured by papermill on 2026-12-05)"


@pytest.mark.slow
def test_run_failure_names_notebook_and_cell(tmp_path, capsys):
    src = tmp_path / "02_bad.ipynb"
    _notebook(src, ['profile = "auto"', "x = 1", "raise ValueError('boom')"])
    original = src.read_bytes()
    assert main(["run", str(src)]) == 1
    err = capsys.readouterr().err
    assert "02_bad.ipynb failed in cell" in err and "ValueError: boom" in err
    assert src.read_bytes() == original, "a failed run must not overwrite the notebook"


@pytest.mark.parametrize("args", [["run", "--profile", "fast"], ["run", "99_missing"]])
def test_run_bad_input(args, capsys):
    assert main(args) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.slow
def test_run_in_place_keeps_the_authored_parameters(tmp_path, capsys):
    src = tmp_path / "03_inplace.ipynb"
    _notebook(src, ['profile = "auto"', "print('profile is', profile)"])
    assert main(["run", str(src), "--profile", "smoke"]) == 0
    executed = nbformat.read(src, as_version=4)
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert executed.cells[0].source == 'profile = "auto"'
    assert "profile is smoke" in executed.cells[-1].outputs[0]["text"]


@pytest.mark.parametrize("passed, status", [(True, 0), (False, 1)])
def test_timing_check_records_its_rows_and_fails_when_a_check_does(out, monkeypatch, capsys, passed, status):
    from vitsurvey import measure, results

    def fake(loads, pause_s, **kwargs):
        assert loads == ("busy",) and pause_s == 2.0
        return [{"method": "A/A", "setting": "busy", "ratio": 1.01, "passed": passed}]

    monkeypatch.setattr(measure, "timing_check", fake)
    assert main(["timing-check", "--loads", "busy", "--pause", "2"]) == status
    said = capsys.readouterr().out
    assert ("1 of 1 checks passed" if passed else "failed: A/A (busy)") in said
    assert results.read(measure.CHECK_STEM)["method"].tolist() == ["A/A"]


def test_timing_check_bad_input(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["timing-check", "--loads", "sometimes"])
    assert stopped.value.code == 2 and "invalid choice: 'sometimes'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_dead_kernel_names_the_notebook_and_the_cell(tmp_path, capsys):
    src = _notebook(tmp_path / "05_dies.ipynb", heading="# t", sources=['profile = "auto"', "x = 1", "import os\nos.kill(os.getpid(), 9)"])
    original = src.read_bytes()
    assert main(["run", str(src)]) == 1
    err = capsys.readouterr().err
    assert "05_dies.ipynb: the kernel died" in err and "cell 4 of 4 (it begins `import os`)" in err
    assert src.read_bytes() == original


@pytest.mark.slow
def test_a_failing_cell_is_numbered_as_the_reader_sees_it_and_the_failed_run_kept(tmp_path, capsys):
    src = _notebook(tmp_path / "06_fails.ipynb", heading="# t", sources=['profile = "auto"', "x = 1", "raise ValueError('boom')"])
    out = tmp_path / "out"
    assert main(["run", str(src), "--out", str(out), "--profile", "smoke"]) == 1
    err = capsys.readouterr().err
    assert "failed in cell 4 of 4 (it begins `raise ValueError('boom')`): ValueError: boom" in err
    kept = out / "06_fails.failed.ipynb"
    assert kept.exists() and str(kept) in err
    assert sorted(p.name for p in out.iterdir()) == ["06_fails.failed.ipynb"]


SLOW = ['profile = "auto"', "import time\ntime.sleep(120)"]


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_run_stops_cleanly_on_ctrl_c_and_sigterm(tmp_path, signum, status):
    src = _notebook(tmp_path / "07_slow.ipynb", SLOW)
    original = src.read_bytes()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-m", "vitsurvey", "run", str(src)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # as from a terminal: a shell's background job would start with Ctrl-C ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not any(scratch.glob("vitsurvey-run-*/07_slow.ipynb")) and time.monotonic() < deadline:
        time.sleep(0.2)  # papermill writes its output notebook once the kernel runs the first cell
    time.sleep(0.3)  # the kernel is still starting: the hardest moment to stop cleanly
    os.killpg(proc.pid, signum) if signum == signal.SIGINT else proc.send_signal(signum)  # Ctrl-C hits the group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert "Traceback" not in err and "stopped" in err and "07_slow.ipynb" in err
    assert src.read_bytes() == original
    time.sleep(1.0)  # anything the run left running would write now
    left = [p.name for p in scratch.rglob("*") if p.suffix in (".ipynb", ".json") or p.name.startswith("vitsurvey-")]
    assert not left, "a temporary notebook copy or kernel file was left behind"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["07_slow.ipynb", "tmp"]


def test_run_with_a_prefix_that_matches_several_lists_them(capsys):
    assert main(["run", "0"]) == 2
    err = capsys.readouterr().err
    assert "matches" in err and "00_tour" in err and "01_vit_anatomy" in err and "Traceback" not in err


def test_run_out_pointing_at_a_file_is_an_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["run", "00_tour", "--out", str(tmp_path / "file")]) == 2
    assert "--out" in capsys.readouterr().err and (tmp_path / "file").read_text() == "x"
