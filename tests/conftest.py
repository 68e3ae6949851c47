"""Shared fixtures: tiny models on disk, a preference file, and composed training configs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from mrpo.testing.configs import compose_config
from mrpo.testing.models import QUANTIZABLE_HIDDEN_SIZE
from mrpo.testing.runs import write_hh_pairs, write_tiny_model


def pytest_runtest_setup(item: pytest.Item) -> None:
    # CI's time budget (.ci/run sets MRPO_TEST_DEADLINE, seconds since the epoch): tests not
    # started by then are reported as skipped for the budget, never silently dropped.
    deadline = os.environ.get("MRPO_TEST_DEADLINE")
    if deadline and time.time() > float(deadline):
        pytest.skip("CI time budget reached before this test started (MRPO_TEST_DEADLINE)")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    # Tiny models are dominated by thread hand-off cost on a small shared machine.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny_chatml"), kind="chatml")


@pytest.fixture(scope="session")
def tiny_4bit_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny chatml Llama at a width every bitsandbytes CPU kernel takes in 4 bits."""
    return write_tiny_model(
        tmp_path_factory.mktemp("tiny_4bit"), kind="chatml", hidden_size=QUANTIZABLE_HIDDEN_SIZE
    )


@pytest.fixture(scope="session")
def tiny_zephyr_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny_zephyr"), kind="zephyr", seed=1)


@pytest.fixture(scope="session")
def hh_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hh_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl", 24)


TrainComposer = Callable[..., DictConfig]


@pytest.fixture
def compose_train(tiny_model_dir: Path, hh_file: Path, tmp_path: Path) -> TrainComposer:
    """Compose the packaged ``train.yaml`` for a tiny CPU run in ``tmp_path`` (no W&B)."""

    def _compose(overrides: Sequence[str] = (), *, output_dir: Path | None = None) -> DictConfig:
        base = [
            "debug=tiny",
            f"model.source={tiny_model_dir}",
            "data=local_file",
            f"data.source={hh_file}",
            f"paths.output_dir={output_dir or tmp_path / 'run'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "logger=none",
            "trainer.enable_model_summary=false",
        ]
        return compose_config([*base, *overrides])

    return _compose
