"""run_evals, result files, and the Lightning EvalCallback in a tiny fit."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from mrpo.callbacks.eval import EvalCallback
from mrpo.errors import OptionError
from mrpo.evals import run_eval_suite, run_evals, write_eval_results
from mrpo.evals.harness import HarnessOptions
from mrpo.testing.models import make_tiny_model
from mrpo.testing.tokenizers import make_tiny_tokenizer
from support.evaldata import write_eval_data
from support.harness import write_tiny_harness_tasks

ALL_EVALS = ["gsm8k", "gsm8k_chat", "truthfulqa"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_eval_data(tmp_path_factory.mktemp("evaldata"))


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer("chatml")


def tiny_model(tokenizer) -> torch.nn.Module:
    return make_tiny_model(len(tokenizer), seed=2, max_position_embeddings=1024)


def test_run_evals_metrics_and_batch_independence(data_dir: Path, tokenizer) -> None:
    model = tiny_model(tokenizer).train()
    kwargs = {"limit": 2, "data_dir": data_dir, "max_new_tokens": 6}
    out = run_eval_suite(model, tokenizer, ALL_EVALS, batch_size=4, **kwargs)
    assert model.training  # mode restored
    names = {"strict_match", "flexible_extract", "num_samples", "seconds", "generated_tokens"}
    expected = {f"eval/{e}/{n}" for e in ("gsm8k", "gsm8k_chat") for n in names} | {
        f"eval/truthfulqa/{n}" for n in ("mc1", "mc2", "num_samples", "seconds", "num_requests")
    }
    assert set(out.metrics) == expected
    assert out.metrics["eval/gsm8k/num_samples"] == 2
    assert out.metrics["eval/truthfulqa/num_requests"] == 2 * (3 + 3)
    assert all(0 <= out.metrics[f"eval/truthfulqa/{k}"] <= 1 for k in ("mc1", "mc2"))
    assert [s["index"] for s in out.samples["gsm8k"]] == [0, 1]  # the first `limit` questions
    assert out.samples["gsm8k"][0]["prompt"].count("Question:") == 6  # 5 shots + the question

    single = run_eval_suite(model, tokenizer, ALL_EVALS, batch_size=1, **kwargs)
    for name in ALL_EVALS[:2]:
        assert [s["generation"] for s in single.samples[name]] == [
            s["generation"] for s in out.samples[name]
        ]
    for key, value in out.metrics.items():
        if not key.endswith("seconds"):
            assert single.metrics[key] == pytest.approx(value, abs=1e-5), key


def test_a_policy_with_eager_attention_evaluates_as_with_sdpa(data_dir: Path, tokenizer) -> None:
    """A policy trained with ``model.attn_implementation=eager``: GSM8K texts (slots of
    unequal 5-shot prompts, guessed tokens) and TruthfulQA scores equal those of the same
    weights under sdpa, and the policy keeps its setting."""
    sdpa, eager = tiny_model(tokenizer), tiny_model(tokenizer)
    eager.set_attn_implementation("eager")
    kwargs = {"limit": 2, "data_dir": data_dir, "max_new_tokens": 12, "batch_size": 2}
    want = run_eval_suite(sdpa, tokenizer, ["gsm8k", "truthfulqa"], **kwargs)
    got = run_eval_suite(eager, tokenizer, ["gsm8k", "truthfulqa"], **kwargs)
    texts = [s["generation"] for s in got.samples["gsm8k"]]
    assert texts == [s["generation"] for s in want.samples["gsm8k"]] and all(texts)
    for key in ("mc1", "mc2"):
        assert got.metrics[f"eval/truthfulqa/{key}"] == pytest.approx(
            want.metrics[f"eval/truthfulqa/{key}"], abs=1e-5
        )
    assert eager.config._attn_implementation == "eager"


def test_run_evals_rejects_bad_arguments_before_work(
    tmp_path: Path, data_dir: Path, tokenizer
) -> None:
    model = tiny_model(tokenizer)
    # Not built in, so lm-eval's; its index here holds only the (absent) include folder.
    harness = HarnessOptions(include_path=[str(tmp_path)], include_defaults=False)
    with pytest.raises(OptionError, match="unknown task 'gsm9k'") as info:
        run_evals(model, tokenizer, ["gsm8k", "gsm9k"], data_dir=data_dir, harness=harness)
    assert info.value.option == "tasks"
    with pytest.raises(ValueError, match="limit"):
        run_evals(model, tokenizer, ["gsm8k"], limit=0, data_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="non-empty strings"):
        run_evals(model, tokenizer, ["gsm8k", ""], data_dir=tmp_path / "missing")


def test_write_eval_results_round_trip(tmp_path: Path) -> None:
    results = {"eval/gsm8k/strict_match": 0.25, "eval/gsm8k/num_samples": 4.0}
    path = write_eval_results(tmp_path / "out" / "results.json", results)
    assert json.loads(path.read_text()) == results
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temporary files left


class TinyLM(L.LightningModule):
    """Language-model training on fixed token rows; records the policy's mode at every step."""

    def __init__(self, tokenizer) -> None:
        super().__init__()
        self.policy = tiny_model(tokenizer).train()
        self.tokenizer = tokenizer
        self.modes: list[bool] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.modes.append(self.policy.training)
        return self.policy(input_ids=batch, labels=batch).loss

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        rows = torch.randint(
            0, len(self.tokenizer), (8, 12), generator=torch.Generator().manual_seed(0)
        )
        return torch.utils.data.DataLoader(rows, batch_size=2)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_eval_callback_in_a_tiny_fit(data_dir: Path, tokenizer, tmp_path: Path) -> None:
    module = TinyLM(tokenizer)
    callback = EvalCallback(
        ["gsm8k", "truthfulqa"],
        every_n_steps=2,
        limit=1,
        final_limit=2,
        batch_size=2,
        max_new_tokens=4,
        data_dir=data_dir,
    )
    csv_logger = CSVLogger(tmp_path, name="csv")
    wandb_logger = WandbLogger(save_dir=str(tmp_path), mode="disabled")
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=[csv_logger, wandb_logger],
        callbacks=[callback],
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=50,
    )
    trainer.fit(module)

    assert module.modes == [True] * 4  # evaluation put the policy back in train mode
    rows = [
        json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()
    ]
    seen = [(r["step"], r["final"], r["eval"], r["index"]) for r in rows]
    assert seen == [
        (2, False, "gsm8k", 0),
        (2, False, "truthfulqa", 0),
        (4, False, "gsm8k", 0),
        (4, False, "truthfulqa", 0),
        (4, True, "gsm8k", 0),
        (4, True, "gsm8k", 1),
        (4, True, "truthfulqa", 0),
        (4, True, "truthfulqa", 1),
    ]
    assert {"question", "generation", "gold", "strict_match", "flexible_extract_correct"} <= set(
        rows[0]
    )
    final = json.loads((tmp_path / "eval" / "final_results.json").read_text())
    assert final["step"] == 4
    assert final["metrics"] == callback.final_metrics
    assert callback.final_metrics["eval/gsm8k/num_samples"] == 2
    assert "eval/truthfulqa/mc2" in trainer.callback_metrics

    with open(Path(csv_logger.log_dir) / "metrics.csv", newline="") as f:
        logged = [r for r in csv.DictReader(f) if r.get("eval/gsm8k/strict_match")]
    assert [int(r["step"]) for r in logged] == [2, 4, 4]
    assert [float(r["eval/gsm8k/num_samples"]) for r in logged] == [1, 1, 2]


def test_eval_callback_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="non-empty strings"):
        EvalCallback([""])
    with pytest.raises(ValueError, match="every_n_steps"):
        EvalCallback(["gsm8k"], every_n_steps=-1)
    with pytest.raises(ValueError, match="limit"):
        EvalCallback(["gsm8k"], limit=0)


def test_eval_callback_with_an_lm_eval_task(data_dir: Path, tokenizer, tmp_path: Path) -> None:
    """An lm-eval task beside a native one; a task that cannot load stops fit before step 1."""
    tasks = write_tiny_harness_tasks(tmp_path / "tasks")
    harness = HarnessOptions(include_path=[str(tasks)], include_defaults=False)

    def fit(evals: list[str]) -> tuple[TinyLM, EvalCallback]:
        module = TinyLM(tokenizer)
        callback = EvalCallback(
            evals, every_n_steps=2, limit=1, final_limit=2, batch_size=2, max_new_tokens=4,
            data_dir=data_dir, harness=harness,
        )  # fmt: skip
        trainer = L.Trainer(
            max_steps=2, accelerator="cpu", logger=False, callbacks=[callback],
            default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False,
        )  # fmt: skip
        trainer.fit(module)
        return module, callback

    module, callback = fit(["truthfulqa", "tiny_mc"])
    assert module.modes == [True, True]
    assert callback.final_metrics["eval/tiny_mc/num_samples"] == 2
    assert "eval/tiny_mc/acc" in callback.final_metrics
    final = json.loads((tmp_path / "eval" / "final_results.json").read_text())
    assert final["tasks"]["tiny_mc"]["backend"] == "lm-eval"
    rows = [json.loads(x) for x in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert {(r["step"], r["eval"]) for r in rows} == {(2, "truthfulqa"), (2, "tiny_mc")}
    assert all("resps" in r for r in rows if r["eval"] == "tiny_mc")  # lm-eval's records

    broken = tmp_path / "broken"
    broken.mkdir()
    text = (tasks / "tiny_mc.yaml").read_text()
    (broken / "tiny_mc.yaml").write_text(text.replace("tiny.jsonl", "gone.jsonl"))
    harness = HarnessOptions(include_path=[str(broken)], include_defaults=False)
    with pytest.raises(OptionError, match=r"'tiny_mc'.*could not be loaded"):
        fit(["tiny_mc"])


MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.slow
@pytest.mark.skipif(not (MIRROR / "gsm8k").is_dir(), reason="local data mirror not available")
def test_packaged_model_batched_equals_one_by_one() -> None:
    """The real SmolLM2 tokenizer and chat template: batch size does not change any score."""
    from mrpo.models import load_model, load_tokenizer

    model = load_model("packaged:smollm2-135m-instruct", trainable=False)
    tokenizer = load_tokenizer("packaged:smollm2-135m-instruct")
    kwargs = {"limit": 3, "data_dir": MIRROR, "max_new_tokens": 48}
    evals = ["gsm8k_chat", "truthfulqa"]
    batched = run_eval_suite(model, tokenizer, evals, batch_size=3, **kwargs)
    single = run_eval_suite(model, tokenizer, evals, batch_size=1, **kwargs)
    assert [s["generation"] for s in batched.samples["gsm8k_chat"]] == [
        s["generation"] for s in single.samples["gsm8k_chat"]
    ]
    assert all("<|im_end|>" not in s["generation"] for s in batched.samples["gsm8k_chat"])
    for a, b in zip(batched.samples["truthfulqa"], single.samples["truthfulqa"], strict=True):
        assert a["mc2"]["logliks"] == pytest.approx(b["mc2"]["logliks"], abs=1e-3)
    assert 0 < batched.metrics["eval/truthfulqa/mc2"] < 1
