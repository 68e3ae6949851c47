"""The loggers (``logger=csv|tensorboard|mlflow|many|wandb``): each composes to its flags, each
writes the same metric names in a tiny run (read back from the CSV record, TensorBoard's event
files, the MLflow store and W&B's offline run file), and a logger whose package is missing
stops the run before anything loads, naming the key and the extra."""

from __future__ import annotations

import csv
import struct
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.loggers import MLFlowLogger

from mrpo.cli import train as train_cli
from mrpo.cli.train import train
from mrpo.config import TrainConfig, to_dataclass
from mrpo.errors import ConfigError
from mrpo.testing.configs import compose_config
from mrpo.testing.runs import tiny_run_args
from mrpo.tracking.backends import MLFLOW_ID_FILE, mlflow_uri
from mrpo.tracking.wandb import LoggerConfig, make_loggers

# The optional loggers' packages (extras `tensorboard`, `mlflow`): `make test` installs them at
# their floors; the core-floors run (`make test-floor`) leaves them out, and says so by name.
needs_tensorboard = pytest.mark.skipif(
    find_spec("tensorboard") is None, reason="the `tensorboard` extra is not installed here"
)
needs_mlflow = pytest.mark.skipif(
    find_spec("mlflow") is None, reason="the `mlflow` extra is not installed here"
)

EXPECTED = {"train/loss", "train/ref_weight/0", "train/ref_weight/1", "val/rewards/accuracy"}


def csv_names(run_dir: Path) -> set[str]:
    with (run_dir / "csv" / "attempt_0" / "metrics.csv").open(newline="") as handle:
        return set(next(csv.reader(handle))) - {"step"}


def tensorboard_names(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard" / "attempt_0"))
    events.Reload()
    return set(events.Tags()["scalars"])


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a W&B offline run file (what ``wandb sync`` uploads).

    The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB
    blocks of chunks, each a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle,
    4 last) and its bytes; a record is one protobuf ``Record``.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def wandb_offline_names(run_dir: Path, timeout: float = 60.0) -> set[str]:
    """The metric names in the run's W&B offline file, once W&B's service has written the
    run's end into it (it writes after ``finish()`` returns)."""
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(path)
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "exit" in kinds, f"{path}: no exit record after {timeout} s"
    names = {
        item.key or "/".join(item.nested_key)
        for record, kind in zip(records, kinds, strict=True)
        if kind == "history"
        for item in record.history.item
    }
    # W&B's own bookkeeping (_step, ...) and Lightning's step axis for W&B alone.
    return {n for n in names if not n.startswith("_")} - {"trainer/global_step"}


@pytest.mark.parametrize(
    ("choice", "flags"),
    [
        (None, (True, False, False)),  # W&B stays the default
        ("wandb", (True, False, False)),
        ("csv", (False, False, False)),
        ("tensorboard", (False, True, False)),
        ("mlflow", (False, False, True)),
        ("many", (True, True, False)),
    ],
)
def test_logger_choices_compose_to_their_flags(choice: str | None, flags: tuple[bool, ...]) -> None:
    overrides = ["paths.output_dir=/tmp/x", *([f"logger={choice}"] if choice else [])]
    cfg = to_dataclass(compose_config(overrides), TrainConfig)
    logger = cfg.logger
    assert (logger.wandb, logger.tensorboard, logger.mlflow) == flags
    assert logger.project == "mrpo" and logger.mode == "auto"  # W&B settings kept everywhere
    if choice == "mlflow":
        assert logger.mlflow_dir.endswith("outputs/mlruns")


@needs_tensorboard
@needs_mlflow
def test_tensorboard_mlflow_and_csv_hold_the_same_metrics(compose_train, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    overrides = ["references=prompted", "references.num_refs=2", "logger.tensorboard=true"]
    overrides += ["logger.mlflow=true", f"logger.mlflow_dir={store}", "logger.tags=[sweep:x]"]
    summary = train(compose_train(overrides))
    run_dir = Path(summary["run_dir"])

    names = csv_names(run_dir)
    assert names >= EXPECTED | {"epoch"}
    assert tensorboard_names(run_dir) == names

    client = MlflowClient(mlflow_uri(str(store)))
    experiment = client.get_experiment_by_name("mrpo")  # logger.project
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == (run_dir / MLFLOW_ID_FILE).read_text()
    assert set(run.data.metrics) == names
    # Same values at the same steps as the CSV record.
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    from mrpo.compare.records import read_metrics

    assert history == pytest.approx(read_metrics(run_dir)["train/loss"])
    # The run's config as dotted parameters, its tags as MLflow tags.
    assert run.data.params["loss.name"] == "mrpo"
    assert run.data.params["references.num_refs"] == "2"
    assert run.data.tags["sweep"] == "x" and run.data.tags["num_refs"] == "2"


@needs_tensorboard
def test_many_logs_wandb_tensorboard_and_csv_alike(
    compose_train, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    summary = train(compose_train(["logger=many", "references=prompted", "references.num_refs=2"]))
    run_dir = Path(summary["run_dir"])
    names = csv_names(run_dir)
    assert names >= EXPECTED
    assert tensorboard_names(run_dir) == names
    assert wandb_offline_names(run_dir) == names
    assert not (run_dir / MLFLOW_ID_FILE).exists()


@needs_tensorboard
@needs_mlflow
def test_a_resumed_run_continues_its_mlflow_run_and_starts_a_new_attempt(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    settings = LoggerConfig(wandb=False, tensorboard=True, mlflow=True, mlflow_dir=str(tmp_path))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_ids = []
    for attempt, lr in enumerate((0.1, 0.2)):  # the resumed start has another config value
        loggers = make_loggers(run_dir, settings, {"optimizer": {"lr": lr}}, name="job0")
        for logger in loggers:
            logger.log_metrics({"train/loss": 1.0 - attempt}, step=attempt)
            logger.finalize("success")
        (mlflow_logger,) = [lg for lg in loggers if isinstance(lg, MLFlowLogger)]
        run_ids.append(mlflow_logger.run_id)
    assert run_ids[0] == run_ids[1]  # one MLflow run, its first parameters kept
    client = MlflowClient(mlflow_uri(str(tmp_path)))
    run = client.get_run(run_ids[0])
    assert run.data.params["optimizer.lr"] == "0.1" and run.info.run_name == "job0"
    steps = [m.step for m in client.get_metric_history(run_ids[0], "train/loss")]
    assert steps == [0, 1]
    # TensorBoard names its attempts as the CSV record does.
    assert sorted(p.name for p in (run_dir / "tensorboard").iterdir()) == ["attempt_0", "attempt_1"]
    assert len(list(run_dir.glob("csv/attempt_*/metrics.csv"))) == 2


@pytest.mark.parametrize(("flag", "module"), [("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_missing_logger_package_is_refused_before_any_load(
    flag: str,
    module: str,
    compose_train,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import lookup finds nothing

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("data or a model was loaded before the logger check")

    monkeypatch.setattr(train_cli, "prepare_data", no_load)
    monkeypatch.setattr(train_cli, "load_policy", no_load)
    with pytest.raises(ConfigError) as err:
        train(compose_train([f"logger.{flag}=true"]))
    assert err.value.key == f"logger.{flag}"
    assert f"pip install 'mrpo[{flag}]'" in err.value.detail

    # Through the real command line, in its own process with the package blocked: exit status 2,
    # the message, no traceback (in this process Hydra's log handlers would outlive the test).
    code = (
        f"import sys; sys.modules[{module!r}] = None; "
        "from mrpo.cli.train import main; sys.argv = ['mrpo-train', *sys.argv[1:]]; main()"
    )
    cfg = compose_train([f"logger.{flag}=true"])
    done = subprocess.run(
        [sys.executable, "-c", code, *_cli_overrides(cfg, flag)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    printed = done.stdout + done.stderr
    assert done.returncode == 2, printed
    assert f"config error: logger.{flag}: needs the '{module}' package" in printed
    assert f"pip install 'mrpo[{flag}]'" in printed and "Traceback" not in printed
    assert not (Path(cfg.paths.output_dir).parent / "cli" / "summary.json").exists()


def _cli_overrides(cfg, flag: str) -> list[str]:
    """The command line of a tiny run with ``logger.<flag>=true``, in its own run folder."""
    run_dir = Path(cfg.paths.output_dir)
    return [
        *tiny_run_args(cfg.model.source, cfg.data.source, cfg.paths.cache_dir),
        f"logger.{flag}=true",
        f"hydra.run.dir={run_dir.parent / 'cli'}",
        "hydra.output_subdir=null",
    ]
