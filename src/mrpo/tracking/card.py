"""The model card of a trained ``model/`` directory (``model/README.md``), in the Hugging Face
model-card format: a YAML header (``base_model``, ``library_name``, ``tags``, ``datasets``)
read by the hub and by :class:`huggingface_hub.ModelCard`, then what a reader needs to know the
model and to train it again: the objective and its options, the K references and their
identities (weights fingerprint, cache key of their log-probs), the data (source, counts,
fingerprints), the hyperparameters, the final scores, the versions and the command.

Everything comes from plain records: the resolved config, ``summary.json``'s contents, the
references of the run's plan and the command line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from mrpo.atomic import write_text
from mrpo.models.sources import PACKAGED_MODEL

CARD_FILE = "README.md"
# The packaged GGUF is a 4-bit export of this hub model.
_HUB_IDS = {PACKAGED_MODEL: "HuggingFaceTB/SmolLM2-135M-Instruct"}
_HYPERPARAMETERS = {
    "data": ("batch_size", "max_length", "max_prompt_length", "prefix_sharing", "packing"),
    "model": ("dtype", "gradient_checkpointing", "fused_lm_head", "quantization"),
    "scheduler": ("name", "warmup_ratio"),
    "trainer": ("max_epochs", "max_steps", "accumulate_grad_batches", "precision"),
}


def card_metadata(config: Mapping[str, Any]) -> ModelCardData:
    """The card's YAML header: the base model, the library, tags and the data set."""
    source = str(config["model"]["source"])
    loss = config["loss"]["name"]
    weights = (config.get("weights") or {}).get("strategy")
    refs = (config.get("references") or {}).get("num_refs")
    tags = ["mrpo", "preference-optimization", loss, f"weights-{weights}", f"k-{refs}"]
    return ModelCardData(
        base_model=_HUB_IDS.get(source, source),
        library_name="transformers",
        tags=list(dict.fromkeys(str(t) for t in tags)),
        datasets=[str(config["data"]["source"])],
    )


def render_card(
    config: Mapping[str, Any],
    summary: Mapping[str, Any],
    references: Sequence[Mapping[str, Any]],
    command: str,
) -> str:
    """The whole card (module doc) as text."""
    body = [
        f"# {config.get('task_name', 'mrpo')}: {config['loss']['name']} on "
        f"{config['data']['source']}",
        f"Trained with mrpo from `{config['model']['source']}` against K={len(references)} "
        "reference model(s): the objective, the references, the data and the settings below "
        "say what it is, and the last section how to train it again.",
        _objective(config),
        _references(references),
        _data(summary.get("data", {})),
        _hyperparameters(config, summary),
        _scores(summary),
        _versions(summary.get("environment", {})),
        f"## Reproduce\n\n```bash\n{command}\n```",
    ]
    header = card_metadata(config).to_yaml()
    return f"---\n{header}\n---\n\n" + "\n\n".join(body) + "\n"


def write_card(target: str | Path, text: str) -> Path:
    """Write ``text`` as ``<target>/README.md`` (checked to parse as a model card)."""
    ModelCard(text)  # raises on a malformed header
    return write_text(Path(target) / CARD_FILE, text)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _objective(config: Mapping[str, Any]) -> str:
    loss = dict(config["loss"])
    weights = dict(config.get("weights") or {})
    rows = [(f"loss.{k}", v) for k, v in loss.items()]
    rows += [(f"weights.{k}", v) for k, v in weights.items()]
    return f"## Objective\n\n`{loss['name']}`\n\n" + _table(("option", "value"), rows)


def _references(references: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        (r["name"], r["source"], r.get("system_prompt") or "", r["model_fingerprint"], key)
        for r in references
        for key in [r["cache_key"]]
    ]
    header = ("name", "weights", "system prompt", "weights fingerprint", "log-prob cache key")
    return "## References\n\n" + _table(header, rows)


def _data(data: Mapping[str, Any]) -> str:
    keys: tuple[str, ...] = (
        "source",
        "rows",
        "dropped",
        "train_pairs",
        "val_pairs",
        "test_pairs",
        "truncated",
    )
    keys += tuple(k for k in data if k.endswith("_fingerprint"))
    return "## Data\n\n" + _table(("", "value"), [(k, data[k]) for k in keys if k in data])


def _hyperparameters(config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    rows: list[tuple[str, Any]] = [("seed", config.get("seed"))]
    optimizer = dict(config.get("optimizer") or {})
    rows += [(f"optimizer.{k}", v) for k, v in optimizer.items()]
    for group, keys in _HYPERPARAMETERS.items():
        values = config.get(group) or {}
        rows += [(f"{group}.{k}", values[k]) for k in keys if k in values]
    lora = (config.get("model") or {}).get("lora") or {}
    if lora.get("enabled"):
        rows += [(f"model.lora.{k}", v) for k, v in lora.items()]
    rows.append(("optimizer steps taken", summary.get("global_step")))
    return "## Hyperparameters\n\n" + _table(("key", "value"), rows)


def _scores(summary: Mapping[str, Any]) -> str:
    finals = sorted(k.removeprefix("final/") for k in summary if k.startswith("final/"))
    rows = [(k, summary.get(f"before/{k}", ""), summary[f"final/{k}"]) for k in finals]
    return "## Final scores\n\n" + _table(("metric", "before training", "after training"), rows)


def _versions(environment: Mapping[str, Any]) -> str:
    packages = environment.get("packages", {})
    rows = [("python", environment.get("python")), ("git commit", environment.get("git_commit"))]
    rows += [(name, version) for name, version in packages.items() if version]
    return "## Versions\n\n" + _table(("package", "version"), rows)
