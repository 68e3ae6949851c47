"""The files the bad inputs name: a tiny model, data files broken in various ways, damaged
weight files, and a real checkpoint of a finished tiny run."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

from mrpo.testing.runs import run_train_cli, write_tiny_model
from support.bad_inputs.case import base_args

GOOD_ROW = {
    "prompt": "How do I bake bread?",
    "chosen": "Mix flour, water, yeast and salt, knead, let it rise, bake.",
    "rejected": "No idea.",
}


def build_fixtures(root: Path, *, env: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Write every file the cases name under ``root``; returns placeholder -> path.

    Runs one real tiny training (a few seconds) for the checkpoint cases.
    """
    root.mkdir(parents=True, exist_ok=True)
    model = write_tiny_model(root / "model")
    good = root / "good.jsonl"
    good.write_text("".join(json.dumps(GOOD_ROW) + "\n" for _ in range(12)))
    packed = gzip.compress(good.read_bytes())
    (root / "truncated.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    (root / "latin1.jsonl").write_bytes(good.read_bytes().replace(b"bread", b"br\xe9ad"))
    (root / "missing.jsonl").write_text(json.dumps({"prompt": "hi", "chosen": "a"}) + "\n")
    files: dict[str, Path] = {
        "root": root,
        "model": model,
        "good": good,
        "cache": root / "cache",
        "truncated": root / "truncated.jsonl.gz",
        "latin1": root / "latin1.jsonl",
        "missing": root / "missing.jsonl",
        "empty_dir": root / "empty",
        "a_file": root / "a_file",
        "fresh_run": root / "fresh_run",
        **_damaged_models(root, model),
    }
    files["empty_dir"].mkdir(exist_ok=True)
    files["a_file"].write_text("not a folder\n")
    # A finished tiny run (default loss and weighting), with its checkpoints.
    run_dir = root / "finished_run"
    done = run_train_cli(
        [*base_args(files), "save_model=false"], run_dir, env=dict(env or {}), timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"the fixture run failed:\n{done.stderr[-3000:]}")
    files["finished_run"] = run_dir
    files["ckpt"] = run_dir / "checkpoints" / "last.ckpt"
    cut_ckpt = root / "cut.ckpt"
    shutil.copy(files["ckpt"], cut_ckpt)
    _trunc(cut_ckpt, 0.5)
    files["cut_ckpt"] = cut_ckpt
    return files


def _damaged_models(root: Path, model: Path) -> dict[str, Path]:
    """Copies of ``model`` without a tokenizer, without a chat template, with cut weights;
    and a cut GGUF file."""
    weights_only = root / "weights_only"
    weights_only.mkdir(exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model / name, weights_only / name)
    no_template = root / "no_template"
    shutil.copytree(model, no_template, dirs_exist_ok=True)
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    for path in no_template.glob("chat_template*"):
        path.unlink()
    cut_weights = root / "cut_weights"
    shutil.copytree(model, cut_weights, dirs_exist_ok=True)
    _trunc(cut_weights / "model.safetensors", 0.6)
    gguf = root / "cut.gguf"
    _write_gguf(gguf)
    _trunc(gguf, 0.5)
    names = ("weights_only", "no_template", "cut_weights", "cut_gguf")
    return dict(zip(names, (weights_only, no_template, cut_weights, gguf), strict=True))


def _trunc(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _write_gguf(path: Path) -> None:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.ones((64, 16), dtype=np.float32))
    writer.add_tensor("output.weight", np.ones((64, 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
