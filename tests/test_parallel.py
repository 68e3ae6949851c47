"""Sharded strategies: the wrap unit found from the model, the strategy objects built from the
configs, the refusals, and FSDP on two CPU processes (gloo) that really shards.

The two-process runs (slow) check what sharding must not change: two FSDP ranks train exactly
like one process with the same global batch, save sharded checkpoints (one file per rank), and a
run resumed from them continues exactly like the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from lightning.pytorch.strategies import ModelParallelStrategy
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from mrpo.compare.records import read_metrics
from mrpo.errors import ConfigError, OptionError
from mrpo.models import LoraConfig, load_model
from mrpo.models import parallel as par
from mrpo.testing.configs import checked_train_config, compose_config
from mrpo.testing.models import make_tiny_model
from mrpo.testing.runs import run_train_cli, tiny_run_args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the wrap unit and the strategy objects --------------------------------------------


def test_the_decoder_layer_class_comes_from_the_model(tiny_model_dir: Path) -> None:
    llama = make_tiny_model(64)
    assert [c.__name__ for c in par.decoder_layer_classes(llama)] == ["LlamaDecoderLayer"]
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64))
    assert [c.__name__ for c in par.decoder_layer_classes(gpt2)] == ["GPT2Block"]
    lora = load_model(str(tiny_model_dir), lora=LoraConfig(enabled=True, r=2, alpha=4.0))
    assert [c.__name__ for c in par.decoder_layer_classes(lora)] == ["LlamaDecoderLayer"]


def test_a_model_without_declared_blocks_is_refused() -> None:
    with pytest.raises(OptionError, match="cannot tell the decoder layers of Sequential"):
        par.decoder_layer_classes(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize(
    ("spec", "option"),
    [
        ({"name": "zero"}, "name"),
        ({}, "name"),
        ({"name": "fsdp", "param_dtype": "int8"}, "param_dtype"),
        ({"name": "fsdp", "state_dict_type": "local"}, "state_dict_type"),
        ({"name": "fsdp", "cpu_offload": "yes"}, "cpu_offload"),
        ({"name": "fsdp", "shard": 2}, "shard"),
        ({"name": "deepspeed", "stage": 1}, "stage"),
        ({"name": "deepspeed", "stage": 2, "offload_parameters": True}, "offload_parameters"),
    ],
)
def test_unusable_strategy_options_are_named(spec: dict, option: str) -> None:
    with pytest.raises(OptionError) as info:
        par.make_strategy(spec)
    assert info.value.option == option


def test_fsdp_builds_a_model_parallel_strategy_over_every_process() -> None:
    fsdp = par.make_strategy({"name": "fsdp", "state_dict_type": "sharded"})
    strategy = fsdp.strategy({"accelerator": "cpu", "devices": 3, "num_nodes": 2})
    assert isinstance(strategy, ModelParallelStrategy)
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (6, 1)
    assert strategy._save_distributed_checkpoint is True
    full = par.make_strategy({"name": "fsdp", "state_dict_type": "full"})
    assert full.strategy({"accelerator": "cpu", "devices": 1})._save_distributed_checkpoint is False
    assert fsdp.shards_parameters
    assert fsdp.param_dtype == torch.bfloat16 and fsdp.reduce_dtype == torch.float32


def test_deepspeed_is_refused_without_its_package_or_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    zero3 = par.make_strategy({"name": "deepspeed", "stage": 3, "offload_parameters": True})
    zero2 = par.make_strategy({"name": "deepspeed"})
    assert zero3.shards_parameters and not zero2.shards_parameters
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "deepspeed" else real(n, *a)
    )
    with pytest.raises(OptionError, match="needs the deepspeed package"):
        zero3.check_machine({"accelerator": "gpu"})
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OptionError, match="runs on CUDA GPUs only"):
        zero3.check_machine({"accelerator": "auto"})


def test_the_trainer_configs_carry_their_strategies(tmp_path: Path) -> None:
    fsdp_cpu = ["trainer=fsdp", "trainer.accelerator=cpu"]
    if par.FSDP_RUNS_ON_CPU:
        cfg = checked_train_config(fsdp_cpu, tmp_path)
    else:  # torch 2.6 (the floor) cannot run FSDP on CPUs: refused by name, then composed
        with pytest.raises(ConfigError) as refused:
            checked_train_config(fsdp_cpu, tmp_path)
        assert refused.value.key == "trainer.strategy.name"
        cfg = compose_config([*fsdp_cpu, f"paths.output_dir={tmp_path}"])
    spec = cfg.trainer.strategy
    assert spec["name"] == "fsdp" and spec["activation_checkpointing"] is True
    assert spec["state_dict_type"] == "sharded" and spec["param_dtype"] == "bfloat16"
    assert cfg.trainer.precision == "32-true"  # FSDP's own mixed precision
    for option, stage in (("deepspeed", 2), ("deepspeed_zero3", 3)):
        # Refused on this machine (no CUDA), but the stage is what the file says.
        with pytest.raises(ConfigError) as info:
            checked_train_config([f"trainer={option}", "trainer.accelerator=cpu"], tmp_path)
        assert info.value.key == "trainer.strategy.name"
        composed = compose_config([f"trainer={option}", f"paths.output_dir={tmp_path}"])
        assert composed.trainer.strategy.stage == stage


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["trainer=fsdp"], "trainer.accelerator"),  # asks for GPUs this machine lacks
        (["trainer=fsdp", "trainer.accelerator=cpu", "eval=quick"], "eval.tasks"),
        (["trainer=fsdp", "trainer.accelerator=cpu", "model=qlora"], "model.quantization"),
        (["trainer=fsdp", "trainer.accelerator=cpu", "model.compile=true"], "model.compile"),
        (
            ["trainer=fsdp", "trainer.accelerator=cpu", "+trainer.strategy.zero=1"],
            "trainer.strategy.zero",
        ),
        (["trainer=gpu", "trainer.accelerator=cpu"], "optimizer.fused"),  # bf16-mixed + clipping
    ],
)
def test_combinations_that_cannot_run_are_refused_before_loading(
    overrides: list[str], key: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        checked_train_config(overrides, tmp_path)
    assert info.value.key == key


def test_refusals_end_the_entry_point_with_status_2_and_no_traceback(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    done = run_train_cli(["trainer=deepspeed_zero3", f"model.source={tiny_model_dir}"], tmp_path)
    assert done.returncode == 2
    assert "config error: trainer.accelerator:" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout


# --- FSDP on CPU processes -------------------------------------------------------------


def _shard_and_score(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule

    from mrpo.logprobs import model_sequence_logprobs

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = make_tiny_model(64, seed=0)
    ids = torch.randint(0, 64, (4, 10), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :3] = -100
    whole = model_sequence_logprobs(model, ids, torch.ones_like(ids), labels).logps.detach()
    total = sum(p.numel() for p in model.parameters())
    fsdp = par.make_strategy({"name": "fsdp", "param_dtype": None, "reduce_dtype": None})
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("data_parallel",))
    fsdp.parallelize(model, {"data_parallel": mesh})
    local = sum(p.to_local().numel() for p in model.parameters())
    units = [type(m).__name__ for m in model.modules() if isinstance(m, FSDPModule)]
    sharded = model_sequence_logprobs(model, ids, torch.ones_like(ids), labels).logps.detach()
    result = {
        "local": local,
        "total": total,
        "units": units,
        "max_diff": float((sharded - whole).abs().max()),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def test_fsdp_shards_every_decoder_layer_across_two_cpu_processes(tmp_path: Path) -> None:
    if not par.FSDP_RUNS_ON_CPU:
        # This torch (the declared floor, 2.6) cannot run FSDP2 on CPUs: refused by name.
        with pytest.raises(ConfigError, match="'fsdp' on CPUs needs a torch") as info:
            checked_train_config(["trainer=fsdp", "trainer.accelerator=cpu"], tmp_path)
        assert info.value.key == "trainer.strategy.name"
        return
    mp.spawn(_shard_and_score, args=(2, free_port(), str(tmp_path)), nprocs=2)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for result in results:
        # Each rank holds about half of the weights (shards are padded to equal rows).
        assert result["local"] < 0.55 * result["total"]
        # One unit per decoder layer (2) and the root; FSDP2 renames the classes FSDP<name>.
        assert sorted(result["units"]) == [
            "FSDPLlamaDecoderLayer", "FSDPLlamaDecoderLayer", "FSDPLlamaForCausalLM"
        ]  # fmt: skip
        assert result["max_diff"] < 1e-5  # the sharded model computes the same log-probs
    assert sum(r["local"] for r in results) >= results[0]["total"]


COMMON = [
    "data.max_samples=24",
    "data.val_size=4",
    "data.batch_size=2",
    "data.eval_batch_size=2",
    "trainer.max_steps=-1",
    "trainer.max_epochs=1",
    "references=prompted",
    "references.num_refs=2",
    "weights=arwc",  # stateless: each rank's windowed strategy would see its own batches only
    "scheduler=constant",
    "scheduler.warmup_ratio=0",
    "optimizer.lr=1e-3",
    "save_model=true",
    "trainer.accelerator=cpu",
]
FSDP_CPU = [
    "trainer=fsdp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.strategy.param_dtype=null",  # float32 throughout: comparable to 1e-5
    "callbacks.checkpoint.every_n_train_steps=3",
]


def train_cli(args: list[str], run_dir: Path) -> dict:
    done = run_train_cli(args, run_dir)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def weights(summary: dict) -> dict[str, torch.Tensor]:
    return load_file(Path(summary["model_dir"]) / "model.safetensors")


@pytest.mark.slow
def test_two_fsdp_cpu_ranks_train_like_one_process_and_resume_from_shards(
    tiny_model_dir: Path, hh_file: Path, tmp_path: Path
) -> None:
    base = [*tiny_run_args(tiny_model_dir, hh_file, tmp_path / "cache"), *COMMON]
    single = train_cli([*base, "trainer.accumulate_grad_batches=2"], tmp_path / "single")
    fsdp = train_cli([*base, *FSDP_CPU], tmp_path / "fsdp")
    assert single["global_step"] == fsdp["global_step"] == 5
    for key in ("final/val/loss", "final/val/rewards/margin"):
        assert fsdp[key] == pytest.approx(single[key], abs=1e-5), key
    one, two = weights(single), weights(fsdp)  # the sharded policy, gathered and saved whole
    assert set(one) == set(two)
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, atol=1e-5, rtol=1e-4)
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(one[n], initial[n]) for n in initial)
    # The checkpoint is sharded: one file of weights and optimizer state per rank.
    last = tmp_path / "fsdp" / "checkpoints" / "last.ckpt"
    assert last.is_dir() and sorted(p.name for p in last.glob("*.distcp")) == [
        "__0_0.distcp", "__1_0.distcp"
    ]  # fmt: skip

    # Stopped after 3 steps, resumed from the shards: the same losses and weights as above.
    resumed_dir = tmp_path / "resumed"
    train_cli([*base, *FSDP_CPU, "trainer.max_steps=3"], resumed_dir)
    resumed = train_cli([*base, *FSDP_CPU, "ckpt_path=last"], resumed_dir)
    full_losses = read_metrics(tmp_path / "fsdp")["train/loss"]
    resumed_losses = read_metrics(resumed_dir)["train/loss"]
    assert sorted(resumed_losses) == sorted(full_losses) == [0, 1, 2, 3, 4]
    for step, loss in full_losses.items():
        assert resumed_losses[step] == pytest.approx(loss, abs=1e-6), step
    for name, value in weights(resumed).items():
        torch.testing.assert_close(value, two[name], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_fsdp_trains_lora_against_the_live_self_reference_like_one_process(
    tiny_model_dir: Path, hh_file: Path, tmp_path: Path
) -> None:
    # The `self` references (plain and prompted) are the sharded LoRA policy with its adapters
    # off, scored live by both ranks together; only the adapters train.
    base = [
        *tiny_run_args(tiny_model_dir, hh_file, tmp_path / "cache"),
        *COMMON,
        "references.mode=live",  # the two prompted `self` references of COMMON, live
        "model.lora.enabled=true",
        "model.lora.r=4",
        "model.lora.alpha=8",
    ]
    single = train_cli([*base, "trainer.accumulate_grad_batches=2"], tmp_path / "single")
    fsdp = train_cli([*base, *FSDP_CPU], tmp_path / "fsdp")
    assert single["global_step"] == fsdp["global_step"] == 5
    assert fsdp["final/val/loss"] == pytest.approx(single["final/val/loss"], abs=1e-5)
    one, two = weights(single), weights(fsdp)  # adapters merged into the saved models
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, atol=1e-5, rtol=1e-4)
    initial = load_file(tiny_model_dir / "model.safetensors")
    moved = [n for n in initial if not torch.equal(one[n], initial[n])]
    assert moved and all("q_proj" in n or "k_proj" in n or "v_proj" in n or "o_proj" in n
                         for n in moved)  # fmt: skip
