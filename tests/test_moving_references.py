"""Moving references (TR-DPO) and a finished run as a reference (Pre-DPO).

The update rules against their closed forms, the copies updated by the training loop on their
schedule, a moving reference scored live beside cached static ones, a resumed run equal to the
uninterrupted one, the refusals, and a run's ``model/`` directory as a reference source.
"""

from __future__ import annotations

import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from mrpo.cli.train import train
from mrpo.compare.records import read_metrics
from mrpo.config import TrainConfig, to_dataclass
from mrpo.data.collate import PreferenceCollator
from mrpo.data.preference import load_preference_data
from mrpo.data.tokenize import tokenize_pairs
from mrpo.errors import ConfigError, OptionError
from mrpo.groups.checks import check_train_config
from mrpo.models import load_model, load_tokenizer
from mrpo.models.checkpoint import load_checkpoint_policy
from mrpo.objectives import get_objective
from mrpo.references import (
    LiveReferences,
    MixedReferences,
    MovingReferences,
    ReferenceEnsemble,
    ReferenceSpec,
)
from mrpo.references.updates import (
    TRL_MIXUP_ALPHA,
    TRL_SYNC_STEPS,
    hard_update_,
    moving_schedule,
    soft_update_,
)
from mrpo.testing.runs import run_train_cli, tiny_run_args
from mrpo.training.module import PreferenceModule

# --- the update rules -------------------------------------------------------------------------


def test_soft_updates_toward_a_fixed_policy_follow_the_closed_form() -> None:
    # n soft updates toward the same policy p: r_n = p + (1 - alpha)^n (r_0 - p).
    gen = torch.Generator().manual_seed(0)
    r0 = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    p = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    ref = [t.clone() for t in r0]
    for _ in range(3):
        soft_update_(ref, p, 0.25)
    for got, start, target in zip(ref, r0, p, strict=True):
        torch.testing.assert_close(got, target + 0.75**3 * (start - target), rtol=0, atol=1e-6)


def test_a_soft_update_mixes_in_the_references_own_dtype_and_a_hard_one_copies() -> None:
    ref = [torch.tensor([1.0, -2.0], dtype=torch.float64)]
    soft_update_(ref, [torch.tensor([3.0, 2.0])], 0.6)
    assert ref[0].dtype == torch.float64
    assert ref[0].tolist() == pytest.approx([0.6 * 3 + 0.4 * 1, 0.6 * 2 + 0.4 * -2])
    hard_update_(ref, [torch.tensor([7.0, 8.0], dtype=torch.float64)])
    assert ref[0].tolist() == [7.0, 8.0]


def test_the_schedule_has_trls_defaults_and_runs_after_every_nth_step() -> None:
    schedule = moving_schedule(None, None, None)
    assert (schedule.update, schedule.alpha, schedule.every_n_steps) == (
        "soft",
        TRL_MIXUP_ALPHA,
        TRL_SYNC_STEPS,
    )
    assert (TRL_MIXUP_ALPHA, TRL_SYNC_STEPS) == (0.6, 512)
    three = moving_schedule("hard", None, 3)
    assert three.alpha == 1.0
    assert [s for s in range(10) if three.due(s)] == [3, 6, 9]


@pytest.mark.parametrize(
    ("options", "option"),
    [
        (("sometimes", None, None), "update"),
        (("soft", 0.0, None), "alpha"),
        (("soft", 1.5, None), "alpha"),
        (("hard", 0.5, None), "alpha"),
        (("soft", None, 0), "every_n_steps"),
    ],
)
def test_unusable_schedule_options_are_named(options, option: str) -> None:
    with pytest.raises(OptionError) as err:
        moving_schedule(*options)
    assert err.value.option == option


def test_only_a_moving_reference_takes_the_update_options() -> None:
    with pytest.raises(OptionError) as err:
        ReferenceSpec("static", source="self", every_n_steps=4).check()
    assert err.value.option == "every_n_steps"
    with pytest.raises(OptionError) as err:
        ReferenceSpec("m", source="moving", quantization="nf4").check()
    assert err.value.option == "quantization"


# --- in the training loop ----------------------------------------------------------------------


class RecordWeights(L.Callback):
    """The policy's and the moving copy's weights after every optimizer step."""

    def __init__(self) -> None:
        self.policy: list[dict[str, torch.Tensor]] = []
        self.reference: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        snapshot = {n: p.detach().clone() for n, p in pl_module.policy.named_parameters()}
        self.policy.append(snapshot)
        copy = pl_module.moving_references.copies[0]
        self.reference.append({n: p.detach().clone() for n, p in copy.named_parameters()})


def tiny_pairs(model_dir: Path, hh_file: Path, n: int):
    examples = load_preference_data(str(hh_file)).examples[:n]
    tokenizer = load_tokenizer(str(model_dir))
    return examples, tokenizer, tokenize_pairs(examples, tokenizer, max_length=96).pairs


def train_with_moving(model_dir: Path, hh_file: Path, tmp_path: Path, spec: ReferenceSpec):
    examples, tokenizer, pairs = tiny_pairs(model_dir, hh_file, 8)
    policy = load_model(str(model_dir))
    policy.train()
    ensemble = ReferenceEnsemble(
        [spec], policy_source=str(model_dir), max_length=96, cache_dir=tmp_path / "cache"
    )
    moving = MovingReferences(ensemble, policy)
    initial = {n: p.detach().clone() for n, p in policy.named_parameters()}
    module = PreferenceModule(
        policy,
        tokenizer,
        get_objective("dpo", beta=0.1),
        lambda params: torch.optim.SGD(params, lr=0.5),
        scheduler_name="constant",
        live_references=MixedReferences(ensemble, moving, examples),
        moving_references=moving,
    )
    record = RecordWeights()
    trainer = L.Trainer(
        max_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    loader = DataLoader(pairs, batch_size=2, collate_fn=PreferenceCollator(tokenizer.pad_token_id))
    trainer.fit(module, train_dataloaders=loader)
    return initial, record


def test_the_training_loop_soft_updates_the_copy_every_n_steps(
    tiny_model_dir: Path, hh_file: Path, tmp_path: Path
) -> None:
    spec = ReferenceSpec("trdpo", source="moving", alpha=0.3, every_n_steps=2)
    initial, record = train_with_moving(tiny_model_dir, hh_file, tmp_path, spec)
    assert len(record.policy) == 4
    # By hand: r <- 0.3 p_s + 0.7 r after steps 2 and 4 only.
    expected, want = dict(initial), []
    for step, policy in enumerate(record.policy, start=1):
        if step % 2 == 0:
            expected = {n: 0.3 * policy[n] + 0.7 * expected[n] for n in expected}
        want.append(expected)
    for step, (got, hand) in enumerate(zip(record.reference, want, strict=True), start=1):
        for name, value in hand.items():
            torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6, msg=f"{step} {name}")
    # The policy did move, so the checks above are not of a constant.
    assert not torch.equal(record.reference[3]["model.norm.weight"], initial["model.norm.weight"])
    assert all(not p.requires_grad for p in record.reference[0].values())


def test_the_training_loop_hard_updates_copy_the_policy(
    tiny_model_dir: Path, hh_file: Path, tmp_path: Path
) -> None:
    spec = ReferenceSpec("trdpo", source="moving", update="hard", every_n_steps=3)
    initial, record = train_with_moving(tiny_model_dir, hh_file, tmp_path, spec)
    after_three = record.policy[2]
    for step, expected in enumerate([initial, initial, after_three, after_three], start=1):
        got = record.reference[step - 1]
        assert all(torch.equal(got[n], expected[n]) for n in expected), step


# --- scored beside cached static references ---------------------------------------------------


def test_a_moving_reference_beside_cached_ones_scores_as_each_alone(
    tiny_model_dir: Path, hh_file: Path, tmp_path: Path
) -> None:
    examples, tokenizer, pairs = tiny_pairs(tiny_model_dir, hh_file, 6)
    policy = load_model(str(tiny_model_dir))
    common = {"policy_source": str(tiny_model_dir), "max_length": 96}
    static_specs = [
        ReferenceSpec("prompted", system_prompt="Be brief."),
        ReferenceSpec("base", source=str(tiny_model_dir)),
    ]
    # Pool order: static, moving, static (the moving one in the middle).
    specs = [static_specs[0], ReferenceSpec("trdpo", source="moving"), static_specs[1]]
    ensemble = ReferenceEnsemble(specs, cache_dir=tmp_path / "cache", **common)
    moving = MovingReferences(ensemble, policy)
    # Move the copy away from the initial weights, then keep it as a model of its own.
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moving.step(policy, 512)
    moved_dir = tmp_path / "moved"
    moving.copies[0].save_pretrained(moved_dir)
    tokenizer.save_pretrained(moved_dir)

    table = ReferenceEnsemble(static_specs, cache_dir=tmp_path / "cache", **common).table(examples)
    collate = PreferenceCollator(tokenizer.pad_token_id, ref_lookup=table)
    batch = collate(pairs[:4])
    mixed = MixedReferences(ensemble, moving, examples, lambda b: (b.ref_chosen, b.ref_rejected))
    chosen, rejected = mixed(batch)

    alone = ReferenceEnsemble(
        [ReferenceSpec("moved", source=str(moved_dir))], cache_dir=tmp_path / "c2", **common
    )
    moved_c, moved_r = LiveReferences(alone, examples=examples)(batch)
    assert chosen.shape == rejected.shape == (3, 4)
    assert not chosen.requires_grad
    torch.testing.assert_close(chosen[[0, 2]], batch.ref_chosen, rtol=0, atol=0)
    torch.testing.assert_close(rejected[[0, 2]], batch.ref_rejected, rtol=0, atol=0)
    torch.testing.assert_close(chosen[1], moved_c[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(rejected[1], moved_r[0], rtol=0, atol=1e-5)
    # The moved copy scores other numbers than the initial weights (a real check of row 1).
    assert not torch.allclose(chosen[1], table.lookup(batch.index)[0][1], atol=1e-3)


def test_a_moving_reference_is_never_cached(tiny_model_dir: Path, tmp_path: Path) -> None:
    ensemble = ReferenceEnsemble(
        [ReferenceSpec("trdpo", source="moving")],
        policy_source=str(tiny_model_dir),
        max_length=96,
        cache_dir=tmp_path / "cache",
    )
    with pytest.raises(ValueError, match="moves and is never cached"):
        ensemble.key(0, [])


# --- through mrpo-train -----------------------------------------------------------------------

MOVING_RUN = [
    "references=prompted",
    "references.num_refs=2",
    "references.pool.1.source=moving",
    "references.pool.1.alpha=0.5",
    "references.pool.1.every_n_steps=2",
    "weights=sliding_window",
    "trainer.max_steps=6",
    "trainer.max_epochs=2",
    "data.max_samples=16",
    "data.val_size=4",
    "data.batch_size=2",
    "callbacks.checkpoint.every_n_train_steps=3",
    "save_model=false",
    # The interrupted attempt stops through max_steps: a constant schedule keeps its learning
    # rates equal to the full run's.
    "scheduler=constant",
    "scheduler.warmup_ratio=0",
]


def last_state(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    return ckpt["state_dict"]


def test_a_resumed_run_with_a_moving_reference_equals_the_uninterrupted_one(
    compose_train, tiny_model_dir: Path, tmp_path: Path
) -> None:
    full = train(compose_train(MOVING_RUN, output_dir=tmp_path / "full"))
    assert full["global_step"] == 6
    resumed_dir = tmp_path / "resumed"
    train(compose_train([*MOVING_RUN, "trainer.max_steps=3"], output_dir=resumed_dir))
    # The moving copy in the checkpoint of step 3 was updated at step 2.
    stopped = last_state(resumed_dir)
    train(compose_train([*MOVING_RUN, "ckpt_path=last"], output_dir=resumed_dir))

    reference = read_metrics(tmp_path / "full")["train/loss"]
    resumed = read_metrics(resumed_dir)["train/loss"]
    assert sorted(reference) == sorted(resumed) == list(range(6))
    for step in range(6):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-5), step
    a, b = last_state(tmp_path / "full"), last_state(resumed_dir)
    moving = [k for k in a if k.startswith("moving_references.")]
    assert moving and sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)
    # The copy moved between the checkpoint of step 3 and the end (updates at steps 4 and 6).
    assert any(not torch.allclose(stopped[k], a[k]) for k in moving)
    # mrpo-eval rebuilds the policy alone from such a checkpoint (the copies are left out).
    last = resumed_dir / "checkpoints" / "last.ckpt"
    rebuilt = load_checkpoint_policy(last, str(tiny_model_dir))
    for name, value in rebuilt.state_dict().items():
        torch.testing.assert_close(value, b[f"policy.{name}"], rtol=0, atol=0, msg=name)


def test_live_static_references_beside_a_moving_one_train_as_cached_ones(
    compose_train, tmp_path: Path
) -> None:
    short = [*MOVING_RUN, "trainer.max_steps=4"]
    train(compose_train(short, output_dir=tmp_path / "cached"))
    train(compose_train([*short, "references.mode=live"], output_dir=tmp_path / "live"))
    cached, live = (read_metrics(tmp_path / d)["train/loss"] for d in ("cached", "live"))
    assert sorted(cached) == sorted(live) == list(range(4))
    for step in range(4):
        assert live[step] == pytest.approx(cached[step], abs=1e-5), step


def test_trdpo_with_the_moving_reference_alone_caches_nothing(compose_train) -> None:
    summary = train(
        compose_train(["references.pool.0.source=moving", "references.pool.0.every_n_steps=1"])
    )
    assert summary["global_step"] == 2
    assert summary["reference_cache"] == {"not_cached": ["self"]}
    # Before training the moving reference is the policy itself: zero reward margins.
    assert summary["before/val/rewards/margin"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_a_killed_run_with_a_moving_reference_resumes_to_the_uninterrupted_one(
    tiny_model_dir: Path, hh_file: Path, tmp_path: Path
) -> None:
    args = [
        *tiny_run_args(tiny_model_dir, hh_file, tmp_path / "cache"),
        *MOVING_RUN,
        "callbacks.checkpoint.every_n_train_steps=2",
    ]
    kill = [
        "+callbacks.extra.kill._target_=mrpo.testing.faults.KillAtStep",
        "+callbacks.extra.kill.step=5",
    ]
    done = run_train_cli(args, tmp_path / "full")
    assert done.returncode == 0, done.stderr[-3000:]
    killed = run_train_cli([*args, *kill], tmp_path / "killed")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    done = run_train_cli([*args, "ckpt_path=last"], tmp_path / "killed")
    assert done.returncode == 0, done.stderr[-3000:]
    reference, resumed = (read_metrics(tmp_path / d)["train/loss"] for d in ("full", "killed"))
    assert sorted(resumed) == list(range(6))
    for step in range(6):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-5), step
    a, b = last_state(tmp_path / "full"), last_state(tmp_path / "killed")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)


def test_a_finished_runs_model_directory_is_a_reference(compose_train, tmp_path: Path) -> None:
    # Pre-DPO: the guide is a DPO run; its model/ becomes the reference of a second run.
    guide = train(compose_train(["trainer.max_steps=4"], output_dir=tmp_path / "guide"))
    model_dir = Path(guide["model_dir"])
    final = train(
        compose_train([f"references.pool.0.source={model_dir}"], output_dir=tmp_path / "final")
    )
    # Against its own initial weights the policy starts with zero reward margins; against the
    # guide it does not: the reference is the guide's trained policy.
    assert guide["before/val/rewards/margin"] == pytest.approx(0.0, abs=1e-6)
    assert abs(final["before/val/rewards/margin"]) > 1e-4
    assert final["reference_cache"]["misses"] == 1
    assert final["global_step"] == 2


# --- refusals, before anything loads ------------------------------------------------------------

TWO_WITH_MOVING = [
    "references=prompted",
    "references.num_refs=2",
    "references.pool.1.source=moving",
]


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (["model.lora.enabled=true"], "references.pool.0.source", "LoRA"),
        (["trainer=fsdp"], "references.pool.0.source", "trainer.strategy=fsdp"),
        (["trainer=deepspeed"], "references.pool.0.source", "trainer.strategy=deepspeed"),
        (["trainer.strategy=deepspeed_stage_2"], "references.pool.0.source", "deepspeed"),
        (["stage=cache"], "stage", "nothing to cache"),
        (["references.pool.0.update=hard", "references.pool.0.alpha=0.5"], None, "alpha"),
    ],
    ids=["lora", "fsdp", "deepspeed", "deepspeed_by_name", "cache_only_moving", "hard_alpha"],
)
def test_combinations_a_moving_reference_cannot_run_in_are_refused(
    compose_train, overrides: list[str], key: str | None, words: str
) -> None:
    cfg = compose_train(["references.pool.0.source=moving", *overrides])
    with pytest.raises(ConfigError) as err:
        check_train_config(to_dataclass(cfg, TrainConfig))
    assert err.value.key == (key or "references.pool.0.alpha")
    assert words in str(err.value)


def test_an_offline_weighting_is_refused_with_a_moving_reference(compose_train) -> None:
    cfg = compose_train([*TWO_WITH_MOVING, "weights=vdw"])
    with pytest.raises(ConfigError) as err:
        check_train_config(to_dataclass(cfg, TrainConfig))
    assert err.value.key == "weights.strategy"


def test_stage_cache_fills_the_static_references_only(compose_train, tmp_path: Path) -> None:
    cfg = compose_train([*TWO_WITH_MOVING, "stage=cache"])
    summary = train(cfg)
    assert summary["stage"] == "cache"
    assert summary["misses"] == 1  # the static reference only
    assert summary["not_cached"] == ["harmless"]


@pytest.mark.slow
def test_two_process_ddp_moves_the_reference_like_one_process_accumulating(
    tiny_model_dir: Path, hh_file: Path, tmp_path: Path
) -> None:
    # 20 training pairs in batches of 2: 5 optimizer steps of 2 batches each way (2 ranks, or
    # 1 process accumulating 2), the reference updated after steps 2 and 4 only.
    args = [
        *tiny_run_args(tiny_model_dir, hh_file, tmp_path / "cache"),
        "data.max_samples=24",
        "data.val_size=4",
        "data.batch_size=2",
        "data.eval_batch_size=2",
        "trainer.max_steps=-1",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        *TWO_WITH_MOVING,
        "references.pool.1.alpha=0.5",
        "references.pool.1.every_n_steps=2",
        "weights=arwc",  # stateless: a windowed strategy would see only its rank's batches
        "save_model=false",
    ]
    single = run_train_cli([*args, "trainer.accumulate_grad_batches=2"], tmp_path / "single")
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_train_cli([*args, "trainer=ddp", "trainer.accelerator=cpu"], tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = last_state(tmp_path / "single"), last_state(tmp_path / "ddp")
    moving = [k for k in a if k.startswith("moving_references.")]
    assert moving and sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4, msg=key)
    initial = load_model(str(tiny_model_dir)).state_dict()
    prefix = "moving_references.copies.0."
    assert any(not torch.equal(a[prefix + n], initial[n]) for n in initial if prefix + n in a)
