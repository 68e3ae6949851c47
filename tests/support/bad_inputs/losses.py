"""Bad loss-type and aggregation options, each refused by name before any model loads.

Each entry is (name, overrides, message regex) of a
:class:`~support.bad_inputs.case.BadInput`; :data:`support.bad_inputs.CASES` includes
them. The options and their domains are in docs/objectives.md.
"""

from __future__ import annotations

LOSS_CASES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "aggregation_name",
        ("loss.aggregation=median",),
        r"config error: loss.aggregation: unknown 'median'; must be one of",
    ),
    (
        "aggregation_with_dpo",
        ("loss=dpo", "loss.aggregation=geometric"),
        r"config error: loss.aggregation: does not apply to loss='dpo'",
    ),
    (
        "loss_type_in_list",
        ("loss.loss_type=[sigmoid,kto]",),
        r"config error: loss.loss_type: item 1: unknown 'kto'; must be one of",
    ),
    (
        "loss_weights_length",
        ("loss.loss_type=[sigmoid,sft]", "loss.loss_weights=[1.0]"),
        r"config error: loss.loss_weights: .*must be a list of 2 numbers",
    ),
    (
        "f_divergence_for_reward_loss",
        ("loss.loss_type=nca_pair", "loss.f_divergence_type=js_divergence"),
        r"config error: loss.f_divergence_type: .*does not apply to loss_type \['nca_pair'\]",
    ),
    (
        "summed_loss_type_length_normalized",
        ("loss.loss_type=sft", "loss.length_normalize=true"),
        r"config error: loss.length_normalize: loss_type \['sft'\] needs summed log-probs",
    ),
    (
        "exo_pair_without_smoothing",
        ("loss.loss_type=exo_pair",),
        r"config error: loss.label_smoothing: loss_type='exo_pair' needs label_smoothing > 0",
    ),
    (
        "official_pairing_needs_harmonic",
        ("loss.harmonic_pairing=official", "loss.aggregation=geometric"),
        r"config error: loss.harmonic_pairing: .*needs aggregation='harmonic'",
    ),
    (
        "alpha_divergence_coef",
        ("loss.f_divergence_type=alpha_divergence", "loss.f_alpha_divergence_coef=2"),
        r"config error: loss.f_alpha_divergence_coef: .*must be in \[0, 1\]",
    ),
    (
        "ld_alpha_above_one",
        ("loss.ld_alpha=1.5",),
        r"config error: loss.ld_alpha: must be in \[0, 1\] or null, got 1.5",
    ),
)
