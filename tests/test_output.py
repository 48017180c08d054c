"""Outputs never cost a user a file: --force replaces only what switchscope wrote, one run per
output at a time, and a run killed at any moment leaves earlier results intact or recoverable."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from switchscope import _output

from cli_helpers import SMALL, one_line_error, run_cli


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def project(tmp_path, capsys) -> Path:
    """A user's folder: a data file switchscope wrote, and notes it did not."""
    proj = tmp_path / "proj"
    proj.mkdir()
    code, _, err = run_cli(capsys, "synth", "--out", proj / "scan.nc", "--rows", "4", "--cols", "4")
    assert code == 0, err
    (proj / "notes.txt").write_text("my lab notes")
    return proj


# -- --force on folders --------------------------------------------------------------------------
def test_force_refuses_the_folder_that_holds_the_input(capsys, project):
    before = snapshot(project)
    code, _, err = run_cli(capsys, "run", "--data", project / "scan.nc", "--out", project, "--force",
                           "--stages", "clean", "--no-progress")
    one_line_error(code, err, "holds the input")
    assert snapshot(project) == before


def test_force_refuses_a_folder_switchscope_did_not_write(capsys, tmp_path):
    home = tmp_path / "home"  # like --out ~
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    code, _, err = run_cli(capsys, "run", "--out", home, "--force", "--stages", "clean", *SMALL)
    one_line_error(code, err, "only a folder written by switchscope")
    assert (home / "thesis.tex").read_text() == "years of work"


def test_force_refuses_a_run_folder_with_a_user_file(capsys, tmp_path):
    out = tmp_path / "o"
    assert run_cli(capsys, "run", "--out", out, "--stages", "clean", *SMALL)[0] == 0
    (out / "figures").mkdir()
    (out / "figures" / "my-figure.svg").write_text("<svg/>")
    code, _, err = run_cli(capsys, "run", "--out", out, "--force", "--stages", "clean", *SMALL)
    one_line_error(code, err, "my-figure.svg")
    assert (out / "figures" / "my-figure.svg").exists()


def test_force_replaces_a_run_folder(capsys, tmp_path):
    out = tmp_path / "o"
    assert run_cli(capsys, "run", "--out", out, "--stages", "clean", *SMALL)[0] == 0
    first = json.loads((out / _output.MARKER).read_text())
    assert first["state"] == "complete" and "results.nc" in first["files"]
    assert run_cli(capsys, "run", "--out", out, "--force", "--stages", "clean", *SMALL)[0] == 0
    second = json.loads((out / _output.MARKER).read_text())
    assert second["run_id"] != first["run_id"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no lock, partial or old folder left


def test_out_is_the_current_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in (".", ".."):
        code, _, err = run_cli(capsys, "run", "--out", out, "--force", "--stages", "clean", *SMALL)
        one_line_error(code, err, "current folder")


# -- --force on files ----------------------------------------------------------------------------
def test_synth_force_refuses_a_file_switchscope_did_not_write(capsys, project):
    code, _, err = run_cli(capsys, "synth", "--out", project / "notes.txt", "--force")
    one_line_error(code, err, "only a file written by switchscope")
    assert (project / "notes.txt").read_text() == "my lab notes"


def test_synth_force_replaces_its_own_file(capsys, project):
    code, _, err = run_cli(capsys, "synth", "--out", project / "scan.nc", "--force", "--rows", "3", "--cols", "3")
    assert code == 0, err


@pytest.mark.parametrize("command", ["fit-loops", "decompose"])
def test_one_stage_commands_refuse_to_replace_their_input(capsys, project, command):
    before = snapshot(project)
    code, _, err = run_cli(capsys, command, "--data", project / "scan.nc", "--out", project / "scan.nc", "--force")
    one_line_error(code, err, "is the input")
    assert snapshot(project) == before


def test_save_overwrite_refuses_a_foreign_file(tmp_path):
    from switchscope._errors import OutputError
    from switchscope.io import save
    from switchscope.synthetic import make_dataset

    p = tmp_path / "x.nc"
    p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(OutputError, match="not written by switchscope"):
        save(make_dataset(rows=2, cols=2), p, overwrite=True)
    assert p.read_bytes()[:4] == b"\x89HDF"


# -- one run per output --------------------------------------------------------------------------
def test_second_run_into_the_same_output_refuses(capsys, tmp_path):
    out = tmp_path / "o"
    with _output.locked(out):  # as a run in progress holds it
        code, _, err = run_cli(capsys, "run", "--out", out, "--stages", "clean", *SMALL)
    one_line_error(code, err, "another switchscope run")
    assert not out.exists()
    assert run_cli(capsys, "run", "--out", out, "--stages", "clean", *SMALL)[0] == 0


# -- leftovers of dead runs ----------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_of_dead_runs_are_swept(capsys, tmp_path):
    out = tmp_path / "o"
    assert run_cli(capsys, "run", "--out", out, "--stages", "clean", *SMALL)[0] == 0
    pid = _dead_pid()
    partial = tmp_path / f".o.partial-{pid}"
    partial.mkdir()
    _output.write_marker(partial, run_id="x", state="partial")
    foreign = tmp_path / f".o.partial-{pid + 1}"  # no marker: not ours, kept
    foreign.mkdir()
    assert run_cli(capsys, "run", "--out", out, "--force", "--stages", "clean", *SMALL)[0] == 0
    assert not partial.exists()
    assert foreign.exists()


# -- kills at several moments, in a real process ---------------------------------------------------
KILLER = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from switchscope import _output, pipeline
    from switchscope.cli import main

    when, out = sys.argv[1], Path(sys.argv[2])
    real_rename, real_stage = _output._rename, pipeline.stage_function

    def rename(src, dst):
        if when == "term-in-swap" and Path(dst).name.startswith(".o.old-"):
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the swap runs: it must wait for its end
        if when == "between-renames" and Path(dst) == out.resolve():
            os.kill(os.getpid(), signal.SIGKILL)
        real_rename(src, dst)
        if when == "after-swap" and Path(dst) == out.resolve():
            os.kill(os.getpid(), signal.SIGKILL)

    def stage(name):
        fn = real_stage(name)
        if name != "loops":
            return fn
        def run(ds, cfg, ctx):
            if when == "in-stage":
                os.kill(os.getpid(), signal.SIGKILL)
            if when == "sigterm":
                print("READY", flush=True)
                time.sleep(60)
            return fn(ds, cfg, ctx)
        return run

    _output._rename = rename
    pipeline.stage_function = stage
    sys.exit(main(["run", "--out", str(out), "--force", "--stages", "clean,loops", "--rows", "4",
                   "--cols", "4", "--no-progress", "--seed", "1"]))
""")


@pytest.mark.parametrize("when", ["in-stage", "between-renames", "after-swap", "sigterm", "term-in-swap"])
def test_a_killed_run_loses_nothing(capsys, tmp_path, when):
    out = tmp_path / "o"
    assert run_cli(capsys, "run", "--out", out, "--stages", "clean", *SMALL)[0] == 0
    before = snapshot(out)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.Popen([sys.executable, str(script), when, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    if when == "sigterm":
        for line in proc.stdout:  # the run's log lines, then the stage's word that it waits
            if line.strip() == "READY":
                break
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if when in ("sigterm", "term-in-swap"):
        assert proc.returncode == 143, err
        assert "Traceback" not in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["killer.py", "o"]
    else:
        assert proc.returncode == -signal.SIGKILL, err
    if when in ("after-swap", "term-in-swap"):
        assert snapshot(out) != before  # the new results made it (the signal waited for the swap)
    elif when == "between-renames":
        assert not out.exists()  # the moment the recovery is for
    else:
        assert snapshot(out) == before

    # the next run tidies up: earlier (or newer) results back in place, no leftovers
    code, _, err = run_cli(capsys, "run", "--out", out, "--stages", "clean", *SMALL)
    if when == "between-renames":
        assert "restored the earlier results" in err
        one_line_error(code, err, "already exists")
        assert snapshot(out) == before
    else:
        one_line_error(code, err, "already exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killer.py", "o"]
    assert json.loads((out / _output.MARKER).read_text())["state"] == "complete"


# -- `switchscope report` writes only into a run's folder, and keeps --force working ------------
def test_report_command_keeps_the_folder_replaceable(capsys, tmp_path):
    out = tmp_path / "o"
    assert run_cli(capsys, "run", "--out", out, "--stages", "clean,report", *SMALL)[0] == 0
    (out / "report" / "index.html").unlink()
    code, _, err = run_cli(capsys, "report", out)
    assert code == 0, err
    assert "report/index.html" in json.loads((out / _output.MARKER).read_text())["files"]
    assert run_cli(capsys, "run", "--out", out, "--force", "--stages", "clean", *SMALL)[0] == 0


def test_report_command_refuses_a_folder_switchscope_did_not_write(capsys, tmp_path):
    from switchscope.io import save
    from switchscope.synthetic import make_dataset

    folder = tmp_path / "mine"
    folder.mkdir()
    save(make_dataset(rows=2, cols=2), folder / "results.nc")
    code, _, err = run_cli(capsys, "report", folder)
    one_line_error(code, err, "did not write it")
    assert sorted(p.name for p in folder.iterdir()) == ["results.nc"]


# -- found by review: the output changes under a run, lock files, report, markers ------------------
def test_a_file_that_appears_in_out_during_the_run_is_kept(capsys, tmp_path, monkeypatch):
    from switchscope import pipeline

    out = tmp_path / "o"
    assert run_cli(capsys, "run", "--out", out, "--stages", "clean", *SMALL)[0] == 0
    real = pipeline.stage_function

    def stage(name):
        fn = real(name)

        def wrapped(ds, cfg, ctx):
            (out / "mine.txt").write_text("written while the run went on")
            return fn(ds, cfg, ctx)
        return wrapped

    monkeypatch.setattr(pipeline, "stage_function", stage)
    code, _, err = run_cli(capsys, "run", "--out", out, "--force", "--stages", "clean", *SMALL)
    one_line_error(code, err, "changed during the run")
    assert (out / "mine.txt").read_text() == "written while the run went on"
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(".o.partial-")]
    assert kept and (kept[0] / "results.nc").is_file()  # the new results are not thrown away


@pytest.mark.parametrize("kind", ["user file", "symlink"])
def test_a_lock_file_name_that_is_not_ours_is_refused(capsys, tmp_path, kind):
    lock = tmp_path / ".o.lock"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    if kind == "symlink":
        lock.symlink_to(victim)
    else:
        lock.write_text("my notes")
    code, _, err = run_cli(capsys, "run", "--out", tmp_path / "o", "--stages", "clean", *SMALL)
    one_line_error(code, err, "lock")
    assert victim.read_text() == "precious"
    assert lock.is_symlink() if kind == "symlink" else lock.read_text() == "my notes"


def test_report_command_never_claims_a_users_file(capsys, tmp_path):
    out = tmp_path / "o"
    assert run_cli(capsys, "run", "--out", out, "--stages", "clean,report", *SMALL)[0] == 0
    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "report", out)
    one_line_error(code, err, "notes.txt")
    assert "notes.txt" not in json.loads((out / _output.MARKER).read_text())["files"]
    code, _, err = run_cli(capsys, "run", "--out", out, "--force", "--stages", "clean", *SMALL)
    one_line_error(code, err, "notes.txt")
    assert (out / "notes.txt").read_text() == "mine"


def test_a_marker_that_is_not_ours_counts_as_none(capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "data.txt").write_text("mine")
    (out / _output.MARKER).write_text(json.dumps({"run_id": "x", "files": 5}))
    code, _, err = run_cli(capsys, "run", "--out", out, "--force", "--stages", "clean", *SMALL)
    one_line_error(code, err, "only a folder written by switchscope")
    assert (out / "data.txt").read_text() == "mine"
