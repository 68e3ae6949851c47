"""Sharded training strategies: FSDP (per decoder layer) and DeepSpeed ZeRO, as one registry.

``trainer.strategy`` is either a Lightning strategy name (``ddp``, ...), passed to the Trainer
as it is, or a mapping ``{name: <a STRATEGIES name>, <option>: ...}`` that mrpo builds here,
because sharding well needs the model: FSDP must know which modules are its units.

- ``fsdp``: PyTorch's fully sharded data parallel (FSDP2, ``torch.distributed.fsdp.fully_shard``)
  through Lightning's ``ModelParallelStrategy``. Every decoder layer is its own FSDP unit
  (the auto-wrap policy), found from the model itself: the classes a transformers model
  declares in ``_no_split_modules`` (:func:`decoder_layer_classes`), whatever the family;
  the root unit holds the embeddings, final norm and LM head. Options: activation
  checkpointing of each decoder layer (the model's own gradient checkpointing), mixed precision
  (parameters gathered in ``param_dtype``, gradients reduced in ``reduce_dtype``, float32
  master weights), ``reshard_after_forward`` (true: ZeRO-3-like; false: keep gathered weights
  until backward, ZeRO-2-like), CPU offload, and sharded checkpoints (``state_dict_type:
  sharded``: each rank writes its shards, and ``ckpt_path=last`` resumes from them). Runs on
  GPUs (nccl) and on CPU processes (gloo).
- ``deepspeed``: DeepSpeed ZeRO stage 2 (optimizer state and gradients sharded) or 3
  (parameters too), optionally offloaded to the CPU, through Lightning's ``DeepSpeedStrategy``;
  needs the ``deepspeed`` package and CUDA GPUs.

A strategy is a small object (:class:`ShardedTraining`) with its options checked on
construction, :meth:`~ShardedTraining.check_machine` (before any model is loaded),
:meth:`~ShardedTraining.strategy` (the Lightning strategy), :meth:`~ShardedTraining.parallelize`
(called from ``LightningModule.configure_model``) and :meth:`~ShardedTraining.full_state_dict`
(the whole trained policy, gathered for saving).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from lightning.pytorch.strategies import Strategy

from mrpo.errors import OptionError, reject_unknown_options
from mrpo.models.loading import DTYPES, enable_gradient_checkpointing

NAME_KEY = "name"
# Whether this torch runs FSDP2 on CPUs (:meth:`FSDP.check_cpu_streams`).
FSDP_RUNS_ON_CPU = hasattr(torch.cpu.Stream, "record_event")
"""The key of a ``trainer.strategy`` mapping that names the strategy."""


def decoder_layer_classes(model: torch.nn.Module) -> tuple[type[torch.nn.Module], ...]:
    """The classes of the model's repeated blocks: its FSDP units.

    A transformers model names the blocks that must not be split across devices in
    ``_no_split_modules`` (``["LlamaDecoderLayer"]``, ``["GPT2Block"]``, ...); these are
    its decoder layers. A peft wrapper is looked through.

    Raises:
        OptionError: (option ``name``) the model declares no such blocks, or none of the
            declared classes occurs in it.
    """
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    declared = set(getattr(base, "_no_split_modules", None) or ())
    found = {type(m) for m in base.modules() if type(m).__name__ in declared}
    if not found:
        raise OptionError(
            NAME_KEY,
            f"cannot tell the decoder layers of {type(base).__name__}: it declares "
            f"_no_split_modules={sorted(declared)} and none of them occurs in the model",
        )
    return tuple(sorted(found, key=lambda cls: cls.__name__))


def _dtype(option: str, value: str | None) -> torch.dtype | None:
    if value is None:
        return None
    dtype = DTYPES.get(value)
    if not isinstance(dtype, torch.dtype):
        names = [k for k, v in DTYPES.items() if isinstance(v, torch.dtype)]
        raise OptionError(option, f"must be one of {names} or null, got {value!r}")
    return dtype


def _flag(option: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise OptionError(option, f"must be true or false, got {value!r}")
    return value


def num_processes(trainer_kwargs: Mapping[str, Any]) -> int:
    """How many processes a Trainer with these arguments runs (devices x nodes).

    Devices are parsed the way Lightning parses them (``-1``, ``"auto"``, a count or a list)
    for the accelerator the arguments select.
    """
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    accelerator = str(trainer_kwargs.get("accelerator", "auto"))
    on_cuda = accelerator in ("gpu", "cuda") or (
        accelerator == "auto" and CUDAAccelerator.is_available()
    )
    devices = trainer_kwargs.get("devices", "auto")
    if on_cuda:
        count = len(CUDAAccelerator.parse_devices(devices) or [])
    else:
        count = int(CPUAccelerator.parse_devices(devices))
    return count * int(trainer_kwargs.get("num_nodes", 1))


def wants_cuda(trainer_kwargs: Mapping[str, Any]) -> bool:
    """Whether a Trainer with these arguments runs on CUDA devices."""
    accelerator = str(trainer_kwargs.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


class ShardedTraining:
    """Base class of the sharded strategies (module docstring)."""

    name: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    """Each option and its default; options are the other keys of ``trainer.strategy``."""

    def __init__(self, **options: Any) -> None:
        reject_unknown_options(options, self.defaults, f"strategy {self.name!r}")
        self.options = {**self.defaults, **options}

    @property
    def shards_parameters(self) -> bool:
        """True when no rank holds the whole weights outside the forward pass."""
        return True

    def check_machine(self, trainer_kwargs: Mapping[str, Any]) -> None:
        """Raise :class:`OptionError` (option ``name``) if this machine cannot run it."""

    def strategy(self, trainer_kwargs: Mapping[str, Any]) -> Strategy:
        """The Lightning strategy for a Trainer with these arguments."""
        raise NotImplementedError

    def parallelize(self, policy: torch.nn.Module, device_mesh: Any) -> None:
        """Shard ``policy`` in place (from ``configure_model``); a no-op by default."""

    def full_state_dict(self, strategy: Strategy, policy: torch.nn.Module) -> dict[str, Any] | None:
        """The whole policy's state dict on global rank 0 (``{}`` on the others), gathered
        by every rank together; None when the policy already holds whole weights."""
        return None


class FSDP(ShardedTraining):
    """Fully sharded data parallel, one unit per decoder layer (module docstring)."""

    name = "fsdp"
    defaults = MappingProxyType(
        {
            "activation_checkpointing": True,
            "param_dtype": "bfloat16",
            "reduce_dtype": "float32",
            "reshard_after_forward": True,
            "cpu_offload": False,
            "state_dict_type": "sharded",
        }
    )
    STATE_DICT_TYPES = ("sharded", "full")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        self.param_dtype = _dtype("param_dtype", o["param_dtype"])
        self.reduce_dtype = _dtype("reduce_dtype", o["reduce_dtype"])
        for flag in ("activation_checkpointing", "reshard_after_forward", "cpu_offload"):
            _flag(flag, o[flag])
        if o["state_dict_type"] not in self.STATE_DICT_TYPES:
            raise OptionError(
                "state_dict_type",
                f"must be one of {self.STATE_DICT_TYPES}, got {o['state_dict_type']!r}",
            )

    def check_cpu_streams(self, trainer_kwargs: Mapping[str, Any]) -> None:
        """Raise :class:`OptionError` (``name``) where this torch cannot run FSDP on CPUs.

        FSDP2 orders its collectives with stream events; torch 2.6's CPU stream records none
        (``fully_shard`` stops at its first all-gather). Checked after every combination
        refusal, so that those name their own keys on any torch.
        """
        on_cpu = not (wants_cuda(trainer_kwargs) and torch.cuda.is_available())
        if on_cpu and not FSDP_RUNS_ON_CPU:
            raise OptionError(
                NAME_KEY,
                f"'fsdp' on CPUs needs a torch whose CPU streams record events (this is "
                f"{torch.__version__}; 2.13 has them); run it on CUDA GPUs or upgrade torch",
            )

    def strategy(self, trainer_kwargs: Mapping[str, Any]) -> Strategy:
        from lightning.pytorch.strategies import ModelParallelStrategy

        # One data-parallel dimension over every process; no tensor parallelism.
        return ModelParallelStrategy(
            data_parallel_size=num_processes(trainer_kwargs),
            tensor_parallel_size=1,
            save_distributed_checkpoint=self.options["state_dict_type"] == "sharded",
        )

    def parallelize(self, policy: torch.nn.Module, device_mesh: Any) -> None:
        from torch.distributed.fsdp import (
            CPUOffloadPolicy,
            MixedPrecisionPolicy,
            OffloadPolicy,
            fully_shard,
        )

        layer_classes = decoder_layer_classes(policy)
        if self.options["activation_checkpointing"]:
            # The model's own per-layer checkpointing: parameter names stay as they are.
            enable_gradient_checkpointing(policy)
        o = self.options
        shard_options = {
            "mesh": device_mesh["data_parallel"],
            "mp_policy": MixedPrecisionPolicy(
                param_dtype=self.param_dtype, reduce_dtype=self.reduce_dtype
            ),
            "offload_policy": CPUOffloadPolicy() if o["cpu_offload"] else OffloadPolicy(),
        }
        layers = [m for m in policy.modules() if isinstance(m, layer_classes)]
        for layer in layers:
            fully_shard(layer, reshard_after_forward=o["reshard_after_forward"], **shard_options)
        # The root unit: embeddings, final norm and LM head (gathered by the policy's forward).
        fully_shard(policy, **shard_options)

    def full_state_dict(self, strategy: Strategy, policy: torch.nn.Module) -> dict[str, Any] | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(policy, options=options)


class DeepSpeed(ShardedTraining):
    """DeepSpeed ZeRO stage 2 or 3 (module docstring)."""

    name = "deepspeed"
    defaults = MappingProxyType(
        {"stage": 2, "offload_optimizer": False, "offload_parameters": False}
    )
    STAGES = (2, 3)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        if o["stage"] not in self.STAGES or isinstance(o["stage"], bool):
            raise OptionError("stage", f"must be one of {self.STAGES}, got {o['stage']!r}")
        _flag("offload_optimizer", o["offload_optimizer"])
        if _flag("offload_parameters", o["offload_parameters"]) and o["stage"] != 3:
            raise OptionError("offload_parameters", "offloads parameters under ZeRO stage 3 only")

    @property
    def shards_parameters(self) -> bool:
        return bool(self.options["stage"] == 3)

    def check_machine(self, trainer_kwargs: Mapping[str, Any]) -> None:
        if importlib.util.find_spec("deepspeed") is None:
            raise OptionError(
                NAME_KEY,
                "'deepspeed' needs the deepspeed package, which is not installed: "
                "pip install 'mrpo[gpu]' (or: pip install deepspeed), on a machine with CUDA GPUs",
            )
        if not (wants_cuda(trainer_kwargs) and torch.cuda.is_available()):
            raise OptionError(
                NAME_KEY,
                "'deepspeed' runs on CUDA GPUs only (Lightning's DeepSpeedStrategy), and "
                + (
                    "trainer.accelerator does not select them"
                    if torch.cuda.is_available()
                    else "this machine has none"
                )
                + "; use trainer=fsdp or trainer=ddp instead",
            )

    def strategy(self, trainer_kwargs: Mapping[str, Any]) -> Strategy:
        from lightning.pytorch.strategies import DeepSpeedStrategy

        o = self.options
        return DeepSpeedStrategy(
            stage=o["stage"],
            offload_optimizer=o["offload_optimizer"],
            offload_parameters=o["offload_parameters"],
        )

    def full_state_dict(self, strategy: Strategy, policy: torch.nn.Module) -> dict[str, Any] | None:
        if not self.shards_parameters:
            return None
        import deepspeed

        # ZeRO-3 partitions every parameter; gather them (all ranks) and copy on rank 0.
        with deepspeed.zero.GatheredParameters(list(policy.parameters()), modifier_rank=None):
            if not strategy.is_global_zero:
                return {}
            return {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}


STRATEGIES: Mapping[str, type[ShardedTraining]] = MappingProxyType(
    {cls.name: cls for cls in (FSDP, DeepSpeed)}
)
"""``trainer.strategy.name`` -> strategy class."""


def make_strategy(spec: Mapping[str, Any]) -> ShardedTraining:
    """Build a strategy from a ``trainer.strategy`` mapping (``name`` and options).

    Raises:
        OptionError: naming ``name`` (missing or unknown) or the unusable option.
    """
    options = {str(k): v for k, v in spec.items() if k != NAME_KEY}
    name = spec.get(NAME_KEY)
    if name not in STRATEGIES:
        raise OptionError(NAME_KEY, f"unknown sharded strategy {name!r}; one of {list(STRATEGIES)}")
    return STRATEGIES[str(name)](**options)
