"""What the command-line tests share: run the CLI in-process, and check the one-line error."""

from __future__ import annotations

from switchscope.cli import main

#: A small synthetic film with no progress bars: the options most CLI tests add.
SMALL = ("--rows", "4", "--cols", "4", "--no-progress")


def run_cli(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``switchscope *argv`` run in this process."""
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_line_error(code, err, match):
    """Exit code 2, no traceback, and one error line (warnings and notes aside) containing ``match``."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines()
             if not ln.startswith(("switchscope: warning:", "switchscope: note:"))]
    assert len(lines) == 1 and lines[0].startswith("switchscope: error:"), err
    assert match.lower() in lines[0].lower(), lines[0]
    return lines[0]
