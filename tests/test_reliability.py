"""The parts that keep long unattended runs safe, unit by unit: sampler epochs, resume state,
run directories and identities, atomic checkpoints, the cache lock, cache access errors,
non-finite references, and the run directory names."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import DataLoader

from mrpo.atomic import TMP_SUFFIX
from mrpo.config.resolvers import unique_suffix
from mrpo.data.collate import LengthGroupedBatchSampler
from mrpo.errors import ConfigError
from mrpo.references.cache import CacheLockTimeout, RefCache
from mrpo.references.cache_entry import CacheAccessError, RefCacheKey
from mrpo.references.cached import ReferenceScoreError, check_finite
from mrpo.references.logps import RefLogps
from mrpo.tracking.rundir import claim_run_dir, identity_differences, run_identity
from mrpo.training.checkpointing import AtomicCheckpointIO
from mrpo.training.metrics import logged_metric_names, metric_names, preference_metrics

KEY = RefCacheKey(
    model="m", tokenizer="t", chat_template=None, system_prompt=None, data="d",
    max_length=8, max_prompt_length=None, truncation="x", dtype="float32", numerics="n",
)  # fmt: skip


def logps(n: int, value: float = -1.0) -> RefLogps:
    ints = torch.arange(n, dtype=torch.int64)
    return RefLogps(ints, torch.full((n,), value), torch.full((n,), value - 1), ints + 1, ints + 1)


# --- epochs ------------------------------------------------------------------------------


def test_lightning_sets_the_epoch_of_the_batch_sampler() -> None:
    sampler = LengthGroupedBatchSampler([5, 3, 8, 2, 7, 1, 4, 6], 2, seed=0)
    loader = DataLoader(list(range(8)), batch_sampler=sampler)
    _set_sampler_epoch(loader, 3)  # what Lightning calls at every epoch start
    assert sampler.epoch == 3
    orders = []
    for epoch in range(3):
        _set_sampler_epoch(loader, epoch)
        orders.append([tuple(b) for b in sampler])
    assert len(set(map(tuple, orders))) == 3


def test_the_epoch_is_read_when_the_first_batch_is_asked_for() -> None:
    # Lightning makes a resumed run's first iterator before it restores the epoch.
    epoch = {"now": 0}
    sampler = LengthGroupedBatchSampler(
        list(range(10)), 2, seed=0, epoch_source=lambda: epoch["now"]
    )
    iterator = iter(sampler)  # made at epoch 0 ...
    epoch["now"] = 1  # ... the checkpoint says epoch 1
    resumed = list(iterator)
    plain = LengthGroupedBatchSampler(list(range(10)), 2, seed=0)
    plain.set_epoch(1)
    assert resumed == list(plain)


def test_a_checkpoint_from_an_epoch_end_resumes_with_the_next_epoch_whole() -> None:
    from mrpo.data.module import PreferenceDataModule
    from mrpo.data.types import TokenizedPair

    pairs = [TokenizedPair((1, 2), (3,), (4,), i) for i in range(10)]

    def batches_after(done: int, loader_first: bool) -> int:
        module = PreferenceDataModule(
            pairs, pairs[:2], pad_token_id=0, ref_lookup=None, batch_size=2, eval_batch_size=2
        )
        # loader_first: strategies that restore after setup (FSDP) build the loader first.
        loader = module.train_dataloader() if loader_first else None
        module.load_state_dict({"epoch": 0, "batches_done": done})
        return len(list(loader if loader is not None else module.train_dataloader()))

    for loader_first in (False, True):
        assert batches_after(5, loader_first) == 5  # every batch of the epoch done: a new one
        assert batches_after(2, loader_first) == 3  # mid-epoch: skip what is done
        assert batches_after(0, loader_first) == 5


# --- run directories and identities --------------------------------------------------------


def test_a_directory_with_a_run_is_claimed_only_to_resume_it(tmp_path: Path) -> None:
    claim_run_dir(tmp_path / "fresh", resuming=False)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "config.yaml").write_text("x")  # a run stopped before training: free
    claim_run_dir(tmp_path / "used", resuming=False)
    (tmp_path / "used" / "summary.json").write_text("{}")
    with pytest.raises(
        ConfigError, match=r"^hydra.run.dir: .*used already holds a run \(summary.json\)"
    ):
        claim_run_dir(tmp_path / "used", resuming=False)
    claim_run_dir(tmp_path / "used", resuming=True)


def test_only_the_first_process_of_a_launch_claims(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.setenv("RANK", "1")  # another rank of the same launch finds rank 0's files
    claim_run_dir(tmp_path, resuming=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError):
        claim_run_dir(tmp_path, resuming=False)


def test_run_identity_names_what_changed_and_ignores_what_may() -> None:
    resolved = {
        "loss": {"beta": 0.1, "name": "mrpo"},
        "trainer": {"max_epochs": 1, "precision": "32-true"},
        "paths": {"output_dir": "/a"},
        "logger": {"project": "x"},
        "eval": {"limit": 5},
        "ckpt_path": None,
    }
    data = {"train_fingerprint": "t1", "val_fingerprint": "v1"}
    saved = run_identity(resolved, data)
    longer = {
        **resolved,
        "trainer": {**resolved["trainer"], "max_epochs": 3},
        "paths": {"output_dir": "/b"},
    }
    assert identity_differences(saved, run_identity({**longer, "ckpt_path": "last"}, data)) == []
    changed = {**resolved, "loss": {"beta": 0.2, "name": "mrpo"}}
    assert identity_differences(saved, run_identity(changed, data)) == ["loss.beta (0.1 -> 0.2)"]
    other_data = {**data, "train_fingerprint": "t2"}
    assert identity_differences(saved, run_identity(resolved, other_data)) == [
        "data train rows (other token ids)"
    ]


def test_run_directory_suffixes_are_unique_but_shared_within_a_launch(monkeypatch) -> None:
    for key in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_STEP_ID"):
        monkeypatch.delenv(key, raising=False)
    drawn = {unique_suffix() for _ in range(50)}
    assert len(drawn) == 50 and all(len(s) == 6 for s in drawn)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")  # every rank of the launch agrees
    assert unique_suffix() == unique_suffix()


# --- checkpoints -------------------------------------------------------------------------


def test_a_failed_checkpoint_write_leaves_the_old_file_whole(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        io.save_checkpoint({"global_step": 2, "w": torch.ones(1000), "x": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert not list(path.parent.glob(f".*{TMP_SUFFIX}"))


def test_the_metrics_a_checkpoint_may_monitor_are_the_ones_logged() -> None:
    from mrpo.data.collate import PreferenceCollator
    from mrpo.data.types import TokenizedPair
    from mrpo.objectives import get_objective

    batch = PreferenceCollator(0)(
        [TokenizedPair((1,), (2, 3), (4,), 0), TokenizedPair((1,), (2,), (5, 6), 1)]
    )
    out = get_objective("mrpo", beta=0.1)(
        torch.tensor([-1.0, -2.0]),
        torch.tensor([-2.0, -1.0]),
        torch.full((3, 2), -1.5),
        torch.full((3, 2), -1.7),
    )
    assert sorted(
        preference_metrics(out, torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0]), batch)
    ) == sorted(metric_names(3))
    assert "val/policy_margin_accuracy" in logged_metric_names(
        3
    ) and "val/ref_weight/2" in logged_metric_names(3)


# --- the reference cache -------------------------------------------------------------------

_HOLDER = """
import sys, time
from pathlib import Path
from mrpo.references.cache import RefCache
from mrpo.references.cache_entry import RefCacheKey
key = RefCacheKey(**__import__("json").loads(sys.argv[1]))
cache = RefCache(sys.argv[2])
with cache.locked(key):
    Path(sys.argv[3]).touch()
    time.sleep(120)
"""


def test_a_lock_wait_names_the_holder_and_times_out(tmp_path: Path, caplog) -> None:
    flag = tmp_path / "locked"
    script = tmp_path / "holder.py"
    script.write_text(textwrap.dedent(_HOLDER))
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(KEY.parts()), str(tmp_path / "c"), str(flag)]
    )
    try:
        end = time.time() + 60
        while not flag.exists():
            assert proc.poll() is None and time.time() < end
            time.sleep(0.05)
        cache = RefCache(tmp_path / "c", lock_timeout=0.6, lock_poll=0.2)
        with (
            caplog.at_level("INFO", logger="mrpo.references.cache"),
            pytest.raises(
                CacheLockTimeout, match=rf"process {proc.pid} on .* \(since .*\) is computing"
            ),
        ):
            cache.get_or_compute(KEY, lambda: logps(3))
        assert f"which process {proc.pid} on" in caplog.text  # said while waiting
    finally:
        proc.kill()
        proc.wait()
    value, hit = RefCache(tmp_path / "c", lock_timeout=5).get_or_compute(KEY, lambda: logps(3))
    assert not hit and len(value) == 3
    assert not (tmp_path / "c" / f"{KEY.digest}.safetensors.lock.holder").exists()


def test_unreadable_and_unwritable_cache_files_are_input_errors(tmp_path: Path) -> None:
    cache = RefCache(tmp_path / "c")
    cache.path(KEY).parent.mkdir(parents=True)
    cache.path(KEY).mkdir()  # a folder where the entry's file should be: reading it fails
    with pytest.raises(CacheAccessError, match=r"cannot read this reference cache file"):
        cache.get(KEY)
    blocked = RefCache(tmp_path / "a_file" / "c")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(CacheAccessError, match=r"cannot create the reference cache folder"):
        blocked.put(KEY, logps(2))


def test_cache_entries_are_readable_by_the_group(tmp_path: Path) -> None:
    path = RefCache(tmp_path / "c").put(KEY, logps(2))
    assert path.stat().st_mode & 0o040


def test_non_finite_reference_scores_are_refused_naming_the_rows() -> None:
    scores = logps(5)
    scores.chosen[3] = float("nan")
    scores.rejected[1] = float("inf")
    with pytest.raises(
        ReferenceScoreError,
        match=r"reference 0 \('r'\) gives non-finite log-probs on 2 row\(s\), "
        r"data set rows \[1, 3\]",
    ):
        check_finite(scores, "reference 0 ('r')")
    check_finite(logps(5), "fine")


def test_an_ensemble_never_caches_non_finite_scores(tmp_path: Path) -> None:
    from mrpo.data.preference import load_preference_data
    from mrpo.references import ReferenceEnsemble, ReferenceSpec
    from mrpo.testing.models import make_tiny_model, save_tiny_model
    from mrpo.testing.runs import write_hh_pairs
    from mrpo.testing.tokenizers import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer("chatml")
    model = make_tiny_model(
        len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")  # every logit row becomes NaN
    save_tiny_model(tmp_path / "broken", model, tokenizer)
    examples = load_preference_data(str(write_hh_pairs(tmp_path / "p.jsonl", 4))).examples
    ensemble = ReferenceEnsemble(
        [ReferenceSpec("broken", source=str(tmp_path / "broken"))],
        max_length=64, cache_dir=tmp_path / "cache", device="cpu",
    )  # fmt: skip
    with pytest.raises(
        ReferenceScoreError, match=r"reference 0 \('broken'.*non-finite log-probs on 4 row"
    ):
        ensemble.precompute(examples, progress=False)
    assert not list((tmp_path / "cache").glob("*.safetensors"))


def test_shard_rows_follow_row_order_not_example_order(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from mrpo.data.preference import load_preference_data
    from mrpo.references import ReferenceEnsemble, ReferenceSpec
    from mrpo.references.sharding import RankInfo, ShardStore, ShardTimeoutError
    from mrpo.testing.runs import write_hh_pairs

    examples = load_preference_data(str(write_hh_pairs(tmp_path / "p.jsonl", 6))).examples

    def shard_index(order: list[int], name: str) -> list[int]:
        ensemble = ReferenceEnsemble(
            [ReferenceSpec("self")], policy_source=str(tiny_model_dir), max_length=64,
            cache_dir=tmp_path / name, device="cpu", ranks=RankInfo(0, 2, 0), shard_timeout=0.1,
        )  # fmt: skip
        rows = [examples[i] for i in order]
        with pytest.raises(ShardTimeoutError):  # rank 1 never comes: rank 0 waits, then stops
            ensemble.precompute(rows, progress=False)
        key = ensemble.fingerprint(0, rows)
        shard = ShardStore(ensemble.cache, key, 2).read(0)
        assert shard is not None
        return shard.index.tolist()

    assert shard_index([0, 1, 2, 3, 4, 5], "a") == shard_index([5, 3, 1, 0, 2, 4], "b") == [0, 2, 4]


def test_wandb_run_ids_are_sixteen_hex_digits(tmp_path: Path, monkeypatch) -> None:
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from mrpo.tracking.record import WANDB_ID_FILE
    from mrpo.tracking.wandb import LoggerConfig, make_loggers

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # A run left open in the process (an earlier in-process job that died) must not be reused.
    (tmp_path / "earlier").mkdir()
    leftover = wandb.init(dir=str(tmp_path / "earlier"), mode="offline", id="leftover0000")
    (tmp_path / "run").mkdir()
    loggers = make_loggers(tmp_path / "run", LoggerConfig(mode="offline"), {"a": 1})
    run_id = (tmp_path / "run" / WANDB_ID_FILE).read_text()
    assert len(run_id) == 16 and int(run_id, 16) >= 0
    (wb,) = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    assert wb.experiment.id == run_id != leftover.id
    for lg in loggers:
        lg.finalize("success")
    wandb.finish()
    assert (tmp_path / "run" / "wandb").is_dir()
