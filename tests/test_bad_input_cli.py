"""Bad input through the real command line: one clear message, exit status 2, no traceback.

The library-level checks of each kind of bad input (every data format problem, every config
check, model sources) are unit-tested next to their code; these tests check what a user sees
from ``mrpo-train``: the message names the culprit, comes before any model is loaded, and is
not buried in a traceback.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import pytest

from mrpo.testing.runs import run_train_cli

pytestmark = pytest.mark.slow

ROW = {
    "prompt": "How do I bake bread?",
    "chosen": "Mix flour, water, yeast and salt, knead, let it rise, bake.",
    "rejected": "No idea.",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    good = root / "good.jsonl"
    good.write_text("".join(json.dumps(ROW) + "\n" for _ in range(12)))
    packed = gzip.compress(good.read_bytes())
    (root / "truncated.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    (root / "latin1.jsonl").write_bytes(good.read_bytes().replace(b"bread", b"br\xe9ad"))
    (root / "missing.jsonl").write_text(json.dumps({"prompt": "hi", "chosen": "a"}) + "\n")
    no_tokenizer = root / "weights_only"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, no_tokenizer / name)
    no_template = root / "no_template"
    shutil.copytree(tiny_model_dir, no_template)
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    for path in no_template.glob("chat_template*"):
        path.unlink()
    return {
        "good": good,
        "truncated": root / "truncated.jsonl.gz",
        "latin1": root / "latin1.jsonl",
        "missing": root / "missing.jsonl",
        "weights_only": no_tokenizer,
        "no_template": no_template,
    }


def run_cli(args: list[str], tmp_path: Path, tiny_model_dir: Path) -> tuple[int, str]:
    """``mrpo-train`` on the tiny setup with ``args``; (exit status, stdout + stderr)."""
    base = [
        "debug=tiny",
        f"model.source={tiny_model_dir}",
        "data=local_file",
        "logger=none",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    done = run_train_cli([*base, *args], tmp_path / "run", timeout=300)
    return done.returncode, done.stdout + done.stderr


CASES = [
    (
        "missing_field",
        ["data.source={missing}"],
        r"data error: .*missing.jsonl: 1 of 1 rows .*line 1: missing field\(s\) 'rejected'.*"
        r"data.drop_invalid=true",
    ),
    (
        "truncated_gzip",
        ["data.source={truncated}"],
        r"data error: .*truncated.jsonl.gz: damaged or truncated gzip file",
    ),
    (
        "not_utf8",
        ["data.source={latin1}"],
        r"data error: .*latin1.jsonl: line 1 is not UTF-8 text \(byte 0xe9\)",
    ),
    (
        "required_key",
        ["data.source=???"],
        r"config error: data.source: required value is missing",
    ),
    ("beta", ["data.source={good}", "loss.beta=0"], r"config error: loss.beta: .* must be > 0"),
    (
        "policy_path",
        ["data.source={good}", "model.source=/no/such/model"],
        r"model error: model source '/no/such/model': no such directory or file",
    ),
    (
        "no_chat_template",
        ["data.source={good}", "model.source={no_template}"],
        r"model error: the tokenizer of '.*no_template' has no chat template",
    ),
    (
        "reference_tokenizer",
        [
            "data.source={good}",
            "references=prompted",
            "references.num_refs=2",
            "references.pool.1.source={weights_only}",
        ],
        r"model error: reference 1 \('harmless'\): could not load a tokenizer from "
        r"'.*weights_only'",
    ),
]


@pytest.mark.parametrize(("name", "args", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_in_one_clear_message(
    name: str,
    args: list[str],
    message: str,
    files: dict[str, Path],
    tmp_path: Path,
    tiny_model_dir: Path,
) -> None:
    status, output = run_cli([a.format(**files) for a in args], tmp_path, tiny_model_dir)
    assert status == 2, output[-3000:]
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, output[-3000:]
    # The whole message (data errors list rows on further lines) from the ERROR line on.
    text = output[output.index(errors[0]) :]
    assert re.search(message, text, flags=re.DOTALL), text
    # Nothing was trained or scored: no policy loaded, no reference cache written.
    assert not (tmp_path / "run" / "summary.json").exists()
    assert not list((tmp_path / "cache").glob("reflogps/*.safetensors"))


def test_typo_in_a_key_is_refused_at_composition(
    files: dict[str, Path], tmp_path: Path, tiny_model_dir: Path
) -> None:
    status, output = run_cli(
        [f"data.source={files['good']}", "data.batchsize=2"], tmp_path, tiny_model_dir
    )
    assert status != 0 and "Traceback" not in output
    assert "Key 'batchsize' not in 'DataConfig'" in output and "full_key: data.batchsize" in output
