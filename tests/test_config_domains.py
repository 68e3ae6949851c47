"""A property test over the whole schema: every leaf key of the composed quickstart config,
given values outside its declared domain (wrong type, out of range, unknown choice, empty
text), is refused naming that key before anything is loaded.

The values are generated from the domains (:mod:`support.domains`), not listed: a key
added to the schema is tried with its own. The fast form composes and checks in process (the
checks ``mrpo-train`` runs before it reads a file); the slow form runs the real command line
for one value of every key. The table of :mod:`support.bad_inputs` keeps its examples.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from omegaconf import DictConfig

from mrpo.cli.preflight import check_built_objects
from mrpo.config import CONFIG_DIR, TrainConfig, register_configs, to_dataclass
from mrpo.config.compose import check_composition, compose_checked, composition_error
from mrpo.domains import Domain
from mrpo.errors import ConfigError
from mrpo.groups.checks import check_train_config
from mrpo.testing.configs import compose_config
from mrpo.testing.runs import run_train_cli
from support.bad_inputs.case import MODEL_LOADED, environment
from support.domains import bad_overrides, leaf_domains, with_override

QUICKSTART = ["experiment=quickstart"]


@pytest.fixture(autouse=True)
def _schemas() -> None:
    register_configs()  # as the entry points do before composing


def _quickstart_domains(tmp: Path) -> dict[str, Domain | None]:
    overrides = [*QUICKSTART, f"paths.output_dir={tmp}"]
    cfg = compose_config(overrides)
    return leaf_domains(cfg, to_dataclass(cfg, TrainConfig))


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Domain | None]:
    return _quickstart_domains(tmp_path_factory.mktemp("domains"))


def test_every_leaf_key_declares_its_domain(domains: dict[str, Domain | None]) -> None:
    undeclared = sorted(k for k, d in domains.items() if d is None)
    assert not undeclared, f"keys without a declared domain: {undeclared}"
    # The quickstart config reaches every group.
    groups = {k.split(".")[0] for k in domains}
    assert {"model", "references", "data", "loss", "weights", "optimizer", "scheduler"} <= groups
    assert {"trainer", "callbacks", "eval", "logger", "paths", "nan_guard", "seed"} <= groups


def _refusal(base: DictConfig, overrides: list[str], override: str) -> ConfigError | None:
    """What the checks ``mrpo-train`` runs before reading any file say of ``override``."""
    try:
        try:
            cfg = with_override(base, override)
        except Exception as err:  # composition refuses it: named as the command line names it
            raise composition_error(err, CONFIG_DIR, "train", [*overrides, override]) from None
        run_cfg = to_dataclass(cfg, TrainConfig)
        check_train_config(run_cfg)
        check_built_objects(run_cfg)
    except ConfigError as err:
        return err
    return None


def test_every_out_of_domain_value_is_refused_naming_its_key(
    domains: dict[str, Domain | None], tmp_path: Path
) -> None:
    cases = bad_overrides(domains)
    assert len(cases) >= 2 * len(domains)  # a wrong type and a value out of range or choice
    overrides = [*QUICKSTART, f"paths.output_dir={tmp_path}"]
    base = compose_config(overrides)
    wrong = []
    for key, override in cases:
        err = _refusal(base, overrides, override)
        if err is None:
            wrong.append(f"{override}: accepted")
        elif err.key != key or "\n" in str(err):
            wrong.append(f"{override}: refused as {err.key!r}: {err}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("seed=abc", "seed"),  # a wrong type
        ("data.batchsize=2", "data.batchsize"),  # an unknown key
        ("loss=nope", "loss"),  # an unknown group option
        ("+trainer.limit_train_batches=2", "trainer.limit_train_batches"),  # not modeled
        ("optimizer.betas=[0.9,abc]", "optimizer.betas"),  # an item of a list
        ("references.pool.1.alpha=abc", "references.pool.1.alpha"),  # a list of groups
    ],
)
def test_composition_errors_name_the_key(override: str, key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        compose_checked(
            CONFIG_DIR, "train", [*QUICKSTART, f"paths.output_dir={tmp_path}", override]
        )
    assert refused.value.key == key and "\n" not in str(refused.value)


@pytest.mark.slow
def test_the_command_line_refuses_every_key_out_of_its_domain(tmp_path: Path) -> None:
    first: dict[str, str] = {}  # one value per key: each run starts a process
    for key, override in bad_overrides(_quickstart_domains(tmp_path / "compose")):
        first.setdefault(key, override)
    cache = tmp_path / "cache"

    def run(item: tuple[int, tuple[str, str]]) -> str | None:
        i, (key, override) = item
        args = [*QUICKSTART, f"paths.cache_dir={cache}", override]
        done = run_train_cli(args, tmp_path / f"run{i}", env=environment(), timeout=300)
        output = done.stdout + done.stderr
        errors = [line for line in output.splitlines() if "[ERROR]" in line]
        loaded = [line for line in output.splitlines() if any(m in line for m in MODEL_LOADED)]
        named = len(errors) == 1 and re.search(rf"error: {re.escape(key)}: ", errors[0])
        if done.returncode == 2 and "Traceback" not in output and named and not loaded:
            return None
        return f"{override}: exit {done.returncode}, errors {errors}\n{output[-1500:]}"

    with ThreadPoolExecutor(max_workers=2) as pool:  # two processes at a time
        wrong = [w for w in pool.map(run, enumerate(first.items())) if w is not None]
    assert not wrong, "\n".join(wrong)
    assert not list(cache.glob("reflogps/*.safetensors"))


def test_a_multirun_is_checked_for_every_swept_value(tmp_path: Path) -> None:
    base = [*QUICKSTART, f"paths.output_dir={tmp_path}"]
    with pytest.raises(ConfigError) as refused:
        check_composition(CONFIG_DIR, "train", [*base, "loss.beta=0.1,0.2", "seed=0,1,abc"], True)
    assert refused.value.key == "seed"
    # Values an Optuna sweeper samples are its own; the rest of the command line composes.
    optuna = ["hydra/sweeper=optuna_tpe", "loss.beta=tag(log, interval(0.01, 1.0))", "seed=0,1"]
    check_composition(CONFIG_DIR, "train", [*base, *optuna], True)
