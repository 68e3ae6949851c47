"""What a reference is: :class:`ReferenceSpec`, and its resolution against the policy; which
references a run uses and how: :class:`ReferencesConfig` (the ``references`` group)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from mrpo.domains import Choice, Flag, Items, Number, Text, setting
from mrpo.errors import OptionError
from mrpo.models import DTYPES
from mrpo.models.quantization import QUANTIZATIONS, precision_label
from mrpo.references.updates import MOVING, UPDATES, MovingSchedule, moving_schedule

SELF = "self"
"""Reference source meaning the policy's initial weights (and the policy's tokenizer)."""

POLICY_SOURCES = (SELF, MOVING)
"""Sources that stand for the policy's own weights (resolved to the policy's model source)."""


@dataclass
class ReferenceSpec:
    """One frozen reference model; also the schema of a ``references.pool`` entry.

    Attributes:
        name: a unique name (logs, metric names, cache metadata).
        source: a model source (hub id, directory, GGUF file,
            ``packaged:smollm2-135m-instruct``), ``"self"`` for the policy's initial weights,
            or ``"moving"`` for a copy of them that follows the policy during training
            (:mod:`mrpo.references.updates`).
        tokenizer: tokenizer source; None uses ``source`` (for ``self``: the policy's).
        chat_template: a Jinja template replacing the tokenizer's own (for ``self``, None
            keeps the policy's template).
        system_prompt: system message inserted into (or replacing the first one of) every
            prompt; None keeps the prompts as they are. The same weights with another system
            prompt make a *prompted reference*.
        dtype: dtype the reference runs in (a ``mrpo.models.DTYPES`` name); with
            ``quantization``, the dtype of its unquantized layers and its compute dtype.
        length_normalize: use the mean log-prob per response token instead of the sum.
        quantization: load the reference's linear layers quantized by bitsandbytes (a
            ``mrpo.models.quantization.QUANTIZATIONS`` name such as ``nf4``), or None.
        update: a moving reference's update rule (``soft`` or ``hard``; None: ``soft``).
        alpha: a moving reference's soft-update share of the policy (None: TRL's 0.6).
        every_n_steps: optimizer steps between a moving reference's updates (None: TRL's 512).
    """

    name: str = setting(domain=Text())  # no default: required in the configs too (``???``)
    source: str = setting(SELF, Text())
    tokenizer: str | None = setting(None, Text(nullable=True))
    chat_template: str | None = setting(None, Text(nullable=True))
    system_prompt: str | None = setting(None, Text(empty=True, nullable=True))
    dtype: str = setting("float32", Choice(list(DTYPES)))
    length_normalize: bool = setting(False, Flag())
    quantization: str | None = setting(None, Choice(list(QUANTIZATIONS), nullable=True))
    update: str | None = setting(None, Choice(lambda: list(UPDATES), nullable=True))
    alpha: float | None = setting(None, Number(float, gt=0, le=1, nullable=True))
    every_n_steps: int | None = setting(None, Number(int, ge=1, nullable=True))

    @property
    def is_moving(self) -> bool:
        """Whether this reference follows the policy (``source: moving``)."""
        return self.source == MOVING

    def schedule(self) -> MovingSchedule:
        """A moving reference's update schedule (TRL's defaults for unset options).

        Raises:
            OptionError: naming ``update``, ``alpha`` or ``every_n_steps``.
        """
        return moving_schedule(self.update, self.alpha, self.every_n_steps)

    def check(self) -> None:
        """Raise :class:`~mrpo.errors.OptionError` naming the first unusable field.

        Not run on construction: the config schema builds these objects from YAML, and the
        config checks call this with the entry's key (``references.pool.<i>``) at hand.
        """
        if not isinstance(self.name, str) or not self.name.strip():
            raise OptionError(
                "name", f"reference name must be a non-empty string, got {self.name!r}"
            )
        if not isinstance(self.source, str) or not self.source.strip():
            raise OptionError(
                "source", f"reference {self.name!r}: source must be a non-empty string"
            )
        if self.dtype not in DTYPES:
            raise OptionError(
                "dtype",
                f"reference {self.name!r}: unknown dtype {self.dtype!r}; "
                f"choose from {list(DTYPES)}",
            )
        if self.chat_template is not None and not self.chat_template.strip():
            raise OptionError(
                "chat_template", f"reference {self.name!r}: chat_template is empty; use None"
            )
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise OptionError(
                "quantization",
                f"reference {self.name!r}: unknown quantization {self.quantization!r}; "
                f"one of {list(QUANTIZATIONS)} or null",
            )
        self._check_moving()

    def _check_moving(self) -> None:
        if not self.is_moving:
            options = ("update", "alpha", "every_n_steps")
            given = [k for k in options if getattr(self, k) is not None]
            if given:
                raise OptionError(
                    given[0],
                    f"reference {self.name!r}: only a moving reference (source: moving) takes "
                    f"{given[0]}",
                )
            return
        if self.quantization is not None:
            raise OptionError(
                "quantization",
                f"reference {self.name!r}: a moving reference follows the policy's weights and "
                "cannot be quantized; use null",
            )
        try:
            self.schedule()
        except OptionError as err:
            raise OptionError(err.option, f"reference {self.name!r}: {err}") from None


@dataclass
class ReferencesConfig:
    """The reference ensemble: the first ``num_refs`` entries of ``pool`` (all when null)."""

    pool: list[ReferenceSpec] = setting(MISSING, Items(min_len=1))
    num_refs: int | None = setting(None, Number(int, ge=1, nullable=True))
    # Pool entries to use, by name and in this order, instead of the first num_refs.
    select: list[str] | None = setting(None, Items(Text(), min_len=1, nullable=True))
    mode: str = setting("cached", Choice(("cached", "live")))
    batch_size: int = setting(8, Number(int, ge=1))
    # Ranks started together (torchrun, srun) each score 1/N of a missing cache entry's rows.
    split_across_ranks: bool = setting(True, Flag())
    shard_timeout_s: float = setting(7200.0, Number(float, gt=0))  # wait for the others' shards
    # How long a job waits for another job filling the same cache entry (null: forever).
    lock_timeout_s: float | None = setting(10800.0, Number(float, gt=0, nullable=True))

    def check(self) -> None:
        """Entry names unique and ``num_refs`` within the pool (an :class:`OptionError`)."""
        names = [r.name for r in self.pool]
        if len(set(names)) != len(names):
            raise OptionError("pool", f"duplicate names in {names}")
        if self.num_refs is not None and not 1 <= self.num_refs <= len(self.pool):
            raise OptionError(
                "num_refs",
                f"must be between 1 and the pool size {len(self.pool)}, got {self.num_refs}",
            )


@dataclass(frozen=True)
class ResolvedReference:
    """A spec with ``self`` replaced by the policy's sources.

    Attributes:
        spec: the spec as given.
        weights: the model source whose weights are loaded.
        tokenizer: the tokenizer source.
        chat_template: the chat template override (None: the tokenizer's own).
        is_self: whether the spec said ``self`` (False for ``moving``, whose weights part
            from the policy's initial ones as training goes).
    """

    spec: ReferenceSpec
    weights: str
    tokenizer: str
    chat_template: str | None
    is_self: bool

    @property
    def model_group(self) -> tuple[str, str]:
        """References with equal groups share one loaded model (weights source, and dtype
        with quantization)."""
        return (self.weights, precision_label(self.spec.dtype, self.spec.quantization))

    @property
    def tokenizer_group(self) -> tuple[str, str | None]:
        """References with equal groups share one loaded tokenizer."""
        return (self.tokenizer, self.chat_template)

    @property
    def text_group(self) -> tuple[str, str | None, str | None]:
        """References with equal groups see the same token ids."""
        return (self.tokenizer, self.chat_template, self.spec.system_prompt)


def resolve_reference(
    spec: ReferenceSpec,
    *,
    policy_source: str | None = None,
    policy_tokenizer: str | None = None,
    policy_chat_template: str | None = None,
) -> ResolvedReference:
    """Replace ``self`` and ``moving`` by the policy's model source, tokenizer and chat template.

    Raises:
        ValueError: the spec says ``self`` or ``moving`` but no ``policy_source`` is given.
    """
    if spec.source not in POLICY_SOURCES:
        tokenizer = spec.tokenizer or spec.source
        return ResolvedReference(spec, spec.source, tokenizer, spec.chat_template, is_self=False)
    if policy_source is None:
        raise ValueError(
            f"reference {spec.name!r} has source {spec.source!r} (the policy's weights) but no "
            "policy source was given"
        )
    tokenizer = spec.tokenizer or policy_tokenizer or policy_source
    template = spec.chat_template if spec.chat_template is not None else policy_chat_template
    return ResolvedReference(spec, policy_source, tokenizer, template, is_self=spec.source == SELF)
