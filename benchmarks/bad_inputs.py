"""How fast ``mrpo-train`` refuses each bad input of :mod:`support.bad_inputs`.

Prints a markdown table: the input, the first line of its message, the exit status and the
wall-clock seconds from the start of the process to its exit (imports included), and whether
any model-loading line appeared before the message (it must not). One process per case, one
after another.

    python benchmarks/bad_inputs.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

# The table of bad inputs is test support (tests/support), not part of the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.bad_inputs import CASES
from support.bad_inputs.case import MODEL_LOADED, environment, run_case
from support.bad_inputs.fixtures import build_fixtures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these cases only")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.only or c.name in args.only]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = build_fixtures(root / "fixtures", env=environment())
        print("| input | message | exit | seconds | model loaded |")
        print("|---|---|---:|---:|---|")
        total = 0.0
        for i, case in enumerate(cases):
            start = time.perf_counter()
            done = run_case(
                case, files, root / f"run{i}", cache=root / f"cache{i}", env=environment()
            )
            seconds = time.perf_counter() - start
            total += seconds
            output = done.stdout + done.stderr
            errors = [line for line in output.splitlines() if "[ERROR]" in line]
            message = re.sub(r"^.*\[ERROR\] - ", "", errors[0]) if errors else "(no error line)"
            message = message.replace(str(root), "…").replace("|", "\\|")
            if len(message) > 140:
                message = message[:137] + "..."
            loaded = any(m in output for m in MODEL_LOADED)
            print(f"| {case.name} | {message} | {done.returncode} | {seconds:.1f} | {loaded} |")
        print(f"\n{len(cases)} inputs, {total / max(len(cases), 1):.1f} s each on average")


if __name__ == "__main__":
    main()
