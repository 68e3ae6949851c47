"""Weight quantization with bitsandbytes: the methods, their checks, and how they are named.

A model (the policy, ``model.quantization``, or a reference, ``references.pool.<i>.quantization``)
may load its linear layers quantized by bitsandbytes: ``nf4`` (QLoRA's 4-bit NormalFloat with
double quantization), ``fp4`` (4-bit float) or ``int8`` (LLM.int8()). The layers it leaves out
(the LM head, embeddings and norms) stay in the model's dtype, which is also the compute dtype
of the quantized layers. A quantized policy trains LoRA adapters only (peft's
``prepare_model_for_kbit_training``, then the adapters).

bitsandbytes is an optional dependency (the ``gpu`` extra; recent releases also run NF4 on
CPUs). :func:`check_runs` finds out before any model is loaded whether this machine can run a
method: the package must be importable and must quantize a small tensor on the device the
model will run on.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from mrpo.errors import OptionError

INSTALL_HINT = "pip install 'mrpo[gpu]' (or: pip install bitsandbytes)"


@dataclass(frozen=True)
class QuantizationMethod:
    """One way of loading quantized weights.

    Attributes:
        name: the config value that selects it.
        description: one line for messages and docs.
        options: ``transformers.BitsAndBytesConfig`` keyword arguments, less the compute dtype.
        compute_dtype_key: the ``BitsAndBytesConfig`` argument that takes the compute dtype,
            or None when the method has none (int8 computes in the model's dtype).
        probe: ``(device) -> None`` quantizes a small tensor on ``device`` with bitsandbytes;
            raises when this machine cannot run the method there.
    """

    name: str
    description: str
    options: Mapping[str, Any]
    compute_dtype_key: str | None
    probe: Callable[[torch.device], None]

    def bnb_config(self, compute_dtype: torch.dtype) -> Any:
        """The ``transformers.BitsAndBytesConfig`` that loads a model this way."""
        from transformers import BitsAndBytesConfig

        kwargs = dict(self.options)
        if self.compute_dtype_key is not None:
            kwargs[self.compute_dtype_key] = compute_dtype
        return BitsAndBytesConfig(**kwargs)


def _probe_4bit(quant_type: str) -> Callable[[torch.device], None]:
    def probe(device: torch.device) -> None:
        import bitsandbytes.functional as bnbf

        weight = torch.linspace(-1.0, 1.0, 128, dtype=torch.bfloat16, device=device)
        packed, state = bnbf.quantize_4bit(weight, quant_type=quant_type)
        restored = bnbf.dequantize_4bit(packed, state, quant_type=quant_type)
        error = (restored.float().flatten() - weight.float()).abs().max()
        if not error < 0.25:  # 4-bit codes of values in [-1, 1]: well within a quarter
            raise RuntimeError(f"a {quant_type} round trip is off by {float(error)}")

    return probe


def _probe_int8(device: torch.device) -> None:
    import bitsandbytes.functional as bnbf

    weight = torch.linspace(-1.0, 1.0, 128, dtype=torch.float16, device=device).view(8, 16)
    bnbf.int8_vectorwise_quant(weight)


QUANTIZATIONS: Mapping[str, QuantizationMethod] = MappingProxyType(
    {
        method.name: method
        for method in (
            QuantizationMethod(
                name="nf4",
                description="4-bit NormalFloat with double quantization (QLoRA)",
                options={
                    "load_in_4bit": True,
                    "bnb_4bit_quant_type": "nf4",
                    "bnb_4bit_use_double_quant": True,
                },
                compute_dtype_key="bnb_4bit_compute_dtype",
                probe=_probe_4bit("nf4"),
            ),
            QuantizationMethod(
                name="fp4",
                description="4-bit float",
                options={"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"},
                compute_dtype_key="bnb_4bit_compute_dtype",
                probe=_probe_4bit("fp4"),
            ),
            QuantizationMethod(
                name="int8",
                description="8-bit integer weights (LLM.int8())",
                options={"load_in_8bit": True},
                compute_dtype_key=None,
                probe=_probe_int8,
            ),
        )
    }
)
"""Quantization name -> method; ``None`` (no entry) loads full-precision weights."""


def quantization_method(name: str) -> QuantizationMethod:
    """The method registered as ``name``.

    Raises:
        OptionError: (option ``quantization``) an unknown name, listing the known ones.
    """
    if name not in QUANTIZATIONS:
        raise OptionError(
            "quantization",
            f"unknown quantization {name!r}; one of {list(QUANTIZATIONS)} or null (none)",
        )
    return QUANTIZATIONS[name]


def bitsandbytes_installed() -> bool:
    """Whether bitsandbytes can be imported (found without importing it)."""
    return importlib.util.find_spec("bitsandbytes") is not None


@functools.cache
def _probe(name: str, device: str) -> str | None:
    """None when ``name`` runs on ``device``, else why not (cached per process)."""
    try:
        QUANTIZATIONS[name].probe(torch.device(device))
    except Exception as err:  # any failure of the backend means the method cannot run here
        return f"{type(err).__name__}: {err}"
    return None


def check_runs(name: str, device: torch.device | str) -> None:
    """Raise unless this machine can load weights quantized by ``name`` on ``device``.

    Nothing is loaded but bitsandbytes itself, which quantizes a 128-value tensor.

    Raises:
        OptionError: (option ``quantization``) an unknown name, bitsandbytes not installed,
            or the installed bitsandbytes cannot quantize on ``device`` (e.g. a build without
            a backend for this machine); the message says what to install or use instead.
    """
    quantization_method(name)
    if not bitsandbytes_installed():
        raise OptionError(
            "quantization", f"{name!r} needs bitsandbytes, which is not installed: {INSTALL_HINT}"
        )
    device = torch.device(device)
    failure = _probe(name, str(device))
    if failure is not None:
        where = "this machine's CPU" if device.type == "cpu" else str(device)
        raise OptionError(
            "quantization",
            f"the installed bitsandbytes cannot run {name!r} on {where} ({failure}); use a "
            "CUDA GPU, a bitsandbytes release with a backend for this device, or "
            "quantization=null",
        )


CPU_PACK_ROWS = 32
"""Output rows per block of bitsandbytes' AVX-512-BF16 CPU layout for 4-bit weights."""


def cpu_packed_layout_fits(out_features: int, in_features: int, blocksize: int) -> bool:
    """Whether bitsandbytes' AVX-512-BF16 CPU layout can hold a 4-bit ``(out, in)`` weight.

    On a CPU with AVX-512-BF16, a 4-bit linear layer repacks its weight at its first inference
    call (eval mode, no grad) into blocks of :data:`CPU_PACK_ROWS` output rows, with one
    scale per ``blocksize`` inputs of each row. Narrower layers fail inside that repacking
    (``shape '[32, 0]' is invalid``); real models' widths are multiples of 64 and fit.
    """
    return out_features % CPU_PACK_ROWS == 0 and in_features % blocksize == 0


def keep_cpu_kernels_in_range(model: torch.nn.Module, *, trainable: bool = False) -> list[str]:
    """Keep 4-bit layers off bitsandbytes' AVX-512-BF16 CPU kernel where it cannot serve them.

    bitsandbytes decides per layer (``support_avx512bf16_for_cpu``, read from the CPU when the
    layer is built) whether an inference call repacks the weight for its AVX-512-BF16 kernel.
    Two cases keep the generic CPU path, which computes the same product:

    - shapes that layout cannot hold (:func:`cpu_packed_layout_fits`): the repacking raises;
    - a trainable model: the repacking is one-way and its kernel has no backward, so a
      validation pass would leave the training steps after it on an inference-only kernel.

    Layers on a CPU without AVX-512-BF16 are untouched (the flag is already off).

    Returns:
        The names of the layers switched to the generic path.
    """
    switched = []
    for name, module in model.named_modules():
        if not getattr(module, "support_avx512bf16_for_cpu", False):
            continue
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is None or len(state.shape) != 2:
            continue
        out_features, in_features = state.shape
        if trainable or not cpu_packed_layout_fits(out_features, in_features, state.blocksize):
            module.support_avx512bf16_for_cpu = False
            switched.append(name)
    return switched


def quantized_as(model: torch.nn.Module) -> str | None:
    """The :data:`QUANTIZATIONS` name a loaded model's weights were quantized with, or None.

    Read from the transformers config's ``quantization_config`` (a peft wrapper is looked
    through); a model quantized some other way than these methods counts as None.
    """
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    qconfig = getattr(getattr(base, "config", None), "quantization_config", None)
    if qconfig is None:
        return None
    read = qconfig.get if isinstance(qconfig, Mapping) else lambda k: getattr(qconfig, k, None)
    if read("load_in_4bit"):
        return str(read("bnb_4bit_quant_type") or "fp4")
    if read("load_in_8bit"):
        return "int8"
    return None


def precision_label(dtype: str, quantization: str | None) -> str:
    """How a model's numbers are computed, for cache keys and logs: ``bfloat16+nf4``."""
    return dtype if quantization is None else f"{dtype}+{quantization}"
