"""Bad input through the real command line: one clear message, exit status 2, no traceback,
before any model is loaded.

The library-level checks of each kind of bad input (every data format problem, every config
check, model sources) are unit-tested next to their code; these tests check what a user sees
from ``mrpo-train`` for the table of bad inputs in :mod:`support.bad_inputs`: the message
names the key, file or row, comes before any model is loaded (no model-loading line in the
log, no reference cache entry), and is not buried in a traceback. ``benchmarks/bad_inputs.py``
prints the same table with the seconds each input takes to be refused.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mrpo.testing.runs import run_train_cli
from support.bad_inputs import CASES
from support.bad_inputs.case import MODEL_LOADED, BadInput, base_args, environment, run_case
from support.bad_inputs.fixtures import build_fixtures

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_fixtures(tmp_path_factory.mktemp("bad"), env=environment())


def test_the_table_covers_forty_distinct_inputs() -> None:
    assert len({c.name for c in CASES}) == len(CASES) >= 40
    assert len({c.args for c in CASES}) == len(CASES)


def test_a_good_run_logs_its_model_loads(files: dict[str, Path]) -> None:
    # The probe the cases rely on: a run that does load models says so in its log.
    log = (files["finished_run"] / "train.log").read_text()
    assert any(line in log for line in MODEL_LOADED)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_ends_in_one_clear_message(
    case: BadInput, files: dict[str, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    done = run_case(case, files, tmp_path / "run", cache=cache, env=environment())
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, output[-3000:]
    # The whole message (data errors list rows on further lines) from the ERROR line on.
    text = output[output.index(errors[0]) :]
    assert re.search(case.message, text, flags=re.DOTALL), text
    # Nothing was loaded, trained or scored: no model-loading line, no cache entry, no summary.
    assert not [line for line in output.splitlines() if any(m in line for m in MODEL_LOADED)]
    assert not list(cache.glob("reflogps/*.safetensors"))
    assert not (tmp_path / "run" / "summary.json").exists()


def test_typo_in_a_key_is_refused_at_composition(files: dict[str, Path], tmp_path: Path) -> None:
    args = [*base_args(files, tmp_path / "cache"), "data.batchsize=2"]
    done = run_train_cli(args, tmp_path / "run", env=environment(), timeout=300)
    output = done.stdout + done.stderr
    # Composition errors end like every other bad value: exit 2, one line naming the key.
    assert done.returncode == 2 and "Traceback" not in output
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, output[-3000:]
    assert "config error: data.batchsize: Key 'batchsize' not in 'DataConfig'" in errors[0]
