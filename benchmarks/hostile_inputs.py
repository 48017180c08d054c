"""The hostile-input table of docs/robustness.md: cases tried per class, cases that hold.

    python benchmarks/hostile_inputs.py                                 # the suite's cases
    SWITCHSCOPE_FUZZ_EXAMPLES=3000 python benchmarks/hostile_inputs.py  # a deeper random fuzz

Runs the test files that hold the hostile cases (tests/test_hostile.py, test_output.py,
test_fuzz_readers.py, test_cli.py) with pytest's JUnit report, sorts every case into the class of
the issue it belongs to, and writes ``benchmarks/results/hostile.json`` and a Markdown table. A
case holds when its test passes: exit code 2 and one line (or success), nothing lost. A fuzz test
counts its generated files: each must hold for the test to pass.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ["tests/test_hostile.py", "tests/test_output.py", "tests/test_fuzz_readers.py", "tests/test_cli.py"]

#: (class, test-name pattern); the first match wins.
CLASSES: list[tuple[str, str]] = [
    ("damaged files (fuzz: truncation, bit flips, header edits)", r"^test_damaged|^test_seed_files"),
    ("data loss: --force, input inside --out, files", r"force|replace|input|current_folder|save_overwrite"
                                                      r"|existing_output|failed_stage_keeps|lock_file_name"
                                                      r"|report_command|marker|appears_in_out"),
    ("crashes and concurrency: kills, lock, leftovers", r"killed|second_run|leftovers"),
    ("tracebacks: file attributes, declared sizes, structure", r"netcdf_attributes|netcdf_voltage|declaring"
                                                               r"|npz_member|mat5|cells|voltage_file|millivolts"),
    ("tracebacks: unbounded options, devices", r"unbounded|numeric_option|device|cuda"),
    ("hangs and garbage: FIFOs, 1e300, JSON, escapes", r"fifo|not_regular|1e300|summary|escape|newline"),
    ("fail before the work, in the user's words", r"preset|toml|savgol|loop_fit_warning|abbreviation|bare"
                                                  r"|help|without_data|score|small_film|training_bar"
                                                  r"|published_network|unknown|out_of_range|bad_grid"),
    ("same command, same answer", r"identical"),
    ("earlier bad-input cases (files, shapes, NaN/Inf)", r"."),
]


def classify(name: str) -> str:
    for cls, pattern in CLASSES:
        if re.search(pattern, name):
            return cls
    return CLASSES[-1][0]


def main() -> int:
    examples = int(os.environ.get("SWITCHSCOPE_FUZZ_EXAMPLES", "0")) or 60
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                        *FILES], cwd=ROOT, check=False)
        tree = ET.parse(report)
    rows: dict[str, dict[str, int]] = {cls: {"tried": 0, "held": 0, "skipped": 0} for cls, _ in CLASSES}
    for case in tree.iter("testcase"):
        name = case.get("name", "")
        cls = classify(name)
        weight = examples if name.startswith(("test_damaged_file", "test_damaged_real")) else 1
        if case.find("skipped") is not None:
            rows[cls]["skipped"] += 1
            continue
        rows[cls]["tried"] += weight
        if case.find("failure") is None and case.find("error") is None:
            rows[cls]["held"] += weight
    result = {"fuzz_examples_per_format": examples, "classes": rows}
    out = ROOT / "benchmarks" / "results" / "hostile.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| class | cases tried | cases that hold |")
    print("| --- | ---: | ---: |")
    for cls, r in rows.items():
        if r["tried"] or r["skipped"]:
            skipped = f" ({r['skipped']} skipped)" if r["skipped"] else ""
            print(f"| {cls} | {r['tried']}{skipped} | {r['held']} |")
    total = sum(r["tried"] for r in rows.values()), sum(r["held"] for r in rows.values())
    print(f"| all | {total[0]} | {total[1]} |")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0 if total[0] == total[1] else 1


if __name__ == "__main__":
    sys.exit(main())
