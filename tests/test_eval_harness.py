"""lm-evaluation-harness as a backend: tiny local tasks on a tiny model, offline.

The tasks are lm-eval's own kind of config reading local files (support.harness); the
task manager indexes only them (``include_defaults=False``), so no test here pays for indexing
lm-eval's thousands of built-in tasks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from mrpo.errors import OptionError
from mrpo.evals import run_eval_suite
from mrpo.evals.harness import HarnessOptions
from mrpo.evals.harness.backend import harness_result, load_harness_data, metric_key
from mrpo.evals.harness.manager import task_manager
from mrpo.evals.harness.preflight import check_harness_tasks, missing_data
from mrpo.evals.loglik import loglikelihood
from mrpo.testing.models import make_tiny_model
from mrpo.testing.tokenizers import make_tiny_tokenizer
from support.evaldata import GSM8K_ROWS, TRUTHFULQA_ROWS, write_eval_data
from support.harness import TINY_DOCS, write_tiny_harness_tasks


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_harness_tasks(tmp_path_factory.mktemp("harness_tasks"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_eval_data(tmp_path_factory.mktemp("evaldata"))


@pytest.fixture(scope="module")
def options(task_dir: Path) -> HarnessOptions:
    return HarnessOptions(include_path=[str(task_dir)], include_defaults=False)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer("chatml")


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_tiny_model(len(tokenizer), seed=3, max_position_embeddings=512)


def test_lm_eval_task_scores_the_in_memory_model(model, tokenizer, data_dir, options) -> None:
    out = run_eval_suite(
        model, tokenizer, ["truthfulqa", "tiny_mc"], data_dir=data_dir, batch_size=2,
        harness=options,
    )  # fmt: skip
    tiny = {k.removeprefix("eval/tiny_mc/"): v for k, v in out.metrics.items() if "tiny_mc" in k}
    assert set(tiny) == {
        "acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "num_samples", "seconds"
    }  # fmt: skip
    assert tiny["num_samples"] == len(TINY_DOCS)
    assert "eval/truthfulqa/mc2" in out.metrics  # the native task ran beside it

    # lm-eval scored this model: its accuracy is the argmax of mrpo's own log-likelihoods
    # of " <choice>" after the prompt, the same request lm-eval builds.
    requests = [(f"Q: {d['question']}\nA:", f" {c}") for d in TINY_DOCS for c in d["choices"]]
    lls = iter(r.logprob for r in loglikelihood(model, tokenizer, requests, batch_size=1))
    picks = []
    for doc in TINY_DOCS:
        scores = [next(lls) for _ in doc["choices"]]
        picks.append(float(scores.index(max(scores)) == doc["answer"]))
    assert tiny["acc"] == pytest.approx(sum(picks) / len(picks))

    samples = out.samples["tiny_mc"]
    assert [s["doc_id"] for s in samples] == [0, 1, 2]
    assert samples[0]["task"] == "tiny_mc"
    assert samples[0]["arguments"][0] == [requests[0][0], requests[0][1]]
    assert {"doc", "resps", "filtered_resps", "acc", "acc_norm"} <= set(samples[0])
    assert [s["acc"] for s in samples] == picks
    json.dumps(samples)  # plain JSON, as the samples file needs
    info = out.info["tiny_mc"]
    assert info["backend"] == "lm-eval" and info["versions"]["tiny_mc"] == 1.0
    assert info["n-shot"]["tiny_mc"] == 0
    assert out.sample_columns["tiny_mc"] == ()  # no W&B table for lm-eval records


def test_group_members_filters_limit_and_fewshot(model, tokenizer, options) -> None:
    few = HarnessOptions(**{**vars(options), "num_fewshot": {"tiny_group": 1}})
    out = run_eval_suite(model, tokenizer, ["tiny_group"], limit=2, harness=few)
    keys = {k.removeprefix("eval/tiny_group/") for k in out.metrics}
    assert {
        "acc", "tiny_mc/acc", "tiny_mc/acc_norm", "tiny_gen/exact_match_first_word",
        "num_samples", "seconds",
    } <= keys  # fmt: skip
    assert out.metrics["eval/tiny_group/num_samples"] == 4  # 2 documents of each member
    assert out.metrics["eval/tiny_group/acc"] == out.metrics["eval/tiny_group/tiny_mc/acc"]
    gen = [s for s in out.samples["tiny_group"] if s["task"] == "tiny_gen"]
    assert [s["doc_id"] for s in gen] == [0, 1]
    prompt = gen[0]["arguments"][0][0]
    assert prompt.count("Q: ") == 2 and prompt.endswith("Q: Is the sea blue?\nA:")  # 1 shot
    assert out.info["tiny_group"]["n-shot"]["tiny_gen"] == 1


def test_metric_keys_and_results() -> None:
    assert metric_key("acc,none") == "acc"
    assert metric_key("exact_match,strict-match") == "exact_match_strict_match"
    assert metric_key("alias") is None
    out = {
        "results": {
            "grp": {"alias": "grp", "acc,none": 0.5, "acc_stderr,none": "N/A"},
            "sub": {"acc,none": 0.25, "acc_stderr,none": float("nan"), "sample_len": 4},
        },
        "n-samples": {"sub": {"original": 9, "effective": 4}},
        "versions": {"sub": 2.0},
        "samples": {"sub": [{"doc_id": 0, "resps": [[(-1.5, False)]]}]},
    }
    result = harness_result("grp", out)  # type: ignore[arg-type]
    assert result.metrics == {"acc": 0.5, "sub/acc": 0.25}  # labels, "N/A" and NaN left out
    assert result.counts == {"num_samples": 4}
    assert result.samples == [{"task": "sub", "doc_id": 0, "resps": [[[-1.5, False]]]}]
    assert result.info["versions"] == {"sub": 2.0}


def test_local_overrides_read_the_mirror(data_dir: Path, options: HarnessOptions) -> None:
    index = task_manager(options, data_dir).task_index
    assert {"gsm8k", "truthfulqa_mc1", "truthfulqa_mc2", "tiny_mc"} <= set(index)
    tqa = load_harness_data("truthfulqa_mc2", options, data_dir).objects[0]
    docs = list(tqa.validation_docs())
    assert [d["question"] for d in docs] == [r["question"] for r in TRUTHFULQA_ROWS]
    assert docs[0]["mc2_targets"] == {
        "choices": list(TRUTHFULQA_ROWS[0]["mc2_targets"]),
        "labels": list(TRUTHFULQA_ROWS[0]["mc2_targets"].values()),
    }
    assert tqa.config.metadata["version"] == 3.0  # lm-eval's own config, data replaced
    gsm = load_harness_data("gsm8k", options, data_dir).objects[0]
    assert [d["answer"] for d in gsm.test_docs()] == [r["answer"] for r in GSM8K_ROWS[:3]]
    assert gsm.config.num_fewshot == 5 and gsm.config.fewshot_split == "train"


def test_local_overrides_need_the_files(tmp_path: Path, options: HarnessOptions) -> None:
    (tmp_path / "gsm8k").mkdir()  # a data folder without the mirror's files
    index = task_manager(options, tmp_path).task_index
    assert "gsm8k" not in index and "tiny_mc" in index


def test_unknown_task_and_missing_lm_eval(
    options: HarnessOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(OptionError, match=r"unknown task 'tiny_mk'.*close matches: tiny_mc"):
        check_harness_tasks(["tiny_mk"], options)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    with pytest.raises(OptionError, match=r"pip install 'mrpo\[lm-eval\]'") as info:
        check_harness_tasks(["tiny_mc"], options)
    assert info.value.option == "tasks"


def test_task_without_reachable_data_is_refused(
    task_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    (tmp_path / "hub_task.yaml").write_text(
        (task_dir / "tiny_mc.yaml").read_text().replace("task: tiny_mc", "task: hub_task")
        + "dataset_path: someone/not-downloaded\ndataset_name: sub\ndataset_kwargs: {}\n"
    )
    (tmp_path / "files_task.yaml").write_text(
        (task_dir / "tiny_mc.yaml")
        .read_text()
        .replace("task: tiny_mc", "task: files_task")
        .replace(str(task_dir / "tiny.jsonl"), str(tmp_path / "absent.jsonl"))
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    options = HarnessOptions(include_path=[str(tmp_path)], include_defaults=False)
    with pytest.raises(OptionError) as info:
        check_harness_tasks(["hub_task"], options)
    message = str(info.value)
    assert "'hub_task'" in message and "someone/not-downloaded (sub)" in message
    assert "HF_HUB_OFFLINE" in message
    with pytest.raises(OptionError, match=r"'files_task'.*absent\.jsonl"):
        check_harness_tasks(["files_task"], options)
    check_harness_tasks(["tiny_mc"], HarnessOptions(include_path=[str(task_dir)]))


def test_missing_data_rules(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{}")
    assert missing_data({"custom_dataset": "f", "dataset_path": "x/y"}) is None
    assert missing_data({"dataset_path": str(tmp_path)}) is None
    local = {"dataset_path": "json", "dataset_kwargs": {"data_files": [str(tmp_path / "a.json")]}}
    assert missing_data(local) is None
    assert "none are given" in (missing_data({"dataset_path": "json"}) or "")
    absent = {"dataset_path": "csv", "dataset_kwargs": {"data_files": {"test": "nope.csv"}}}
    assert "nope.csv" in (missing_data(absent) or "")


def test_fewshot_of_a_zero_shot_task_is_refused(tmp_path: Path) -> None:
    (tmp_path / "zero.yaml").write_text(
        "task: zero\ncustom_dataset: !function mod.f\noutput_type: multiple_choice\n"
        "num_fewshot: 0\n"
    )
    options = HarnessOptions(
        include_path=[str(tmp_path)], include_defaults=False, num_fewshot={"zero": 5}
    )
    with pytest.raises(OptionError, match="0-shot") as info:
        check_harness_tasks(["zero"], options)
    assert info.value.option == "harness.num_fewshot.zero"


def test_evaluation_leaves_the_random_state_alone(model, tokenizer, options) -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    run_eval_suite(model, tokenizer, ["tiny_mc"], limit=1, harness=options)
    assert torch.equal(torch.rand(3), expected)  # lm-eval seeds torch; isolate_rng undoes it
