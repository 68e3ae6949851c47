"""The objective registry, option handling, input validation and checkpoint state."""

from __future__ import annotations

import pytest
import torch

from mrpo.objectives import (
    OBJECTIVES,
    Objective,
    available_objectives,
    available_weightings,
    get_objective,
    get_objective_spec,
)
from mrpo.objectives.weighting.strategies import ARWCWeights, FixedWeights, PrimaryReference


def batch(num_refs: int = 2, size: int = 3):
    policy = -torch.arange(1.0, size + 1)
    reference = -torch.arange(1.0, num_refs * size + 1).reshape(num_refs, size)
    return policy, policy - 1, reference, reference - 2


def test_registry_lists_objectives_with_their_needs() -> None:
    assert available_objectives() == ("dpo", "multi_dpo", "mrpo")
    assert set(OBJECTIVES) == set(available_objectives())
    assert {"uniform", "fixed", "arwc", "vdw", "vaw", "sliding_window", "thompson"} <= set(
        available_weightings()
    )
    dpo, mrpo = get_objective_spec("dpo"), get_objective_spec("mrpo")
    assert (dpo.min_refs, dpo.max_refs, dpo.weighted) == (1, 1, False)
    assert (mrpo.min_refs, mrpo.max_refs, mrpo.weighted) == (1, None, True)
    assert all(spec.needs_reference for spec in OBJECTIVES.values())
    assert "harmonic_pairing" in mrpo.options and "harmonic_pairing" not in dpo.options
    assert "ctro" in get_objective_spec("multi_dpo").options


def test_get_objective_defaults_and_attributes() -> None:
    mrpo = get_objective("mrpo", beta=0.2)
    assert isinstance(mrpo, Objective) and mrpo.name == "mrpo" and mrpo.beta == 0.2
    assert mrpo.config.ctro is True and mrpo.config.epsilon == 0.1
    assert mrpo.config.adaptive_epsilon is True and mrpo.config.harmonic_pairing == "general"
    assert isinstance(mrpo.weighting, ARWCWeights)
    assert mrpo.num_refs_required == (1, None)
    multi = get_objective("multi_dpo")
    assert multi.config.ctro is False and isinstance(multi.weighting, ARWCWeights)
    dpo = get_objective("dpo")
    assert isinstance(dpo.weighting, PrimaryReference) and dpo.num_refs_required == (1, 1)
    official = get_objective("mrpo", harmonic_pairing="official")
    assert official.num_refs_required == (2, 2)
    fixed = get_objective("multi_dpo", weighting="fixed", fixed_weights=[1, 3])
    assert isinstance(fixed.weighting, FixedWeights)
    assert fixed.weighting.fixed_weights == (0.25, 0.75)


def test_ctro_switch_changes_multi_dpo() -> None:
    policy, _, reference, _ = batch()
    far = reference.clone()
    far[1] *= 3  # reference 2 far outside the band
    plain = get_objective("multi_dpo")(policy, policy - 1, far, far - 2)
    clipped = get_objective("multi_dpo", ctro=True)(policy, policy - 1, far, far - 2)
    assert plain.clip_fraction.item() == 0.0 and clipped.clip_fraction.item() > 0.0
    assert not torch.allclose(plain.losses, clipped.losses)


OPTION_ERRORS = [
    ({"name": "ppo"}, "unknown objective 'ppo'"),
    ({"name": "mrpo", "weighting": "bogus"}, "unknown option 'weighting'='bogus'"),
    ({"name": "mrpo", "loss_type": "kto"}, "unknown option 'loss_type'='kto'"),
    ({"name": "dpo", "beta": 0.0}, "option 'beta' must be > 0"),
    ({"name": "dpo", "beta": -1.0}, "option 'beta' must be > 0"),
    ({"name": "dpo", "beta": float("nan")}, "option 'beta' must be a finite number"),
    ({"name": "dpo", "label_smoothing": 0.7}, r"option 'label_smoothing' must be in \[0, 0.5\]"),
    (
        {"name": "dpo", "loss_type": "ipo", "label_smoothing": 0.1},
        r"option 'label_smoothing' applies to loss_type in \[.*'sigmoid'.*\] only",
    ),
    ({"name": "mrpo", "epsilon": 1.5}, r"option 'epsilon' must be in \[0, 1\]"),
    ({"name": "mrpo", "ctro": "yes"}, "option 'ctro' must be a bool"),
    ({"name": "mrpo", "harmonic_pairing": "odd"}, "unknown option 'harmonic_pairing'='odd'"),
    ({"name": "dpo", "ctro": True}, r"objective 'dpo' does not accept option\(s\) \['ctro'\]"),
    ({"name": "multi_dpo", "harmonic_pairing": "official"}, "does not accept option"),
    ({"name": "mrpo", "weighting": "fixed"}, "weighting 'fixed' needs option 'fixed_weights'"),
    (
        {"name": "mrpo", "weighting": "fixed", "fixed_weights": [1, -1]},
        "option 'fixed_weights' must be non-negative",
    ),
    (
        {"name": "mrpo", "weighting": "fixed", "fixed_weights": [0, 0]},
        "option 'fixed_weights' must not be all zero",
    ),
    (
        {"name": "mrpo", "weighting": "fixed", "fixed_weights": "ab"},
        "option 'fixed_weights' must be a list of numbers",
    ),
    (
        {"name": "mrpo", "weighting": "fixed", "fixed_weights": [1, 2], "num_refs": 3},
        "option 'fixed_weights' has 2 entries but there are K=3 references",
    ),
    (
        {"name": "mrpo", "harmonic_pairing": "official", "num_refs": 3},
        "option 'harmonic_pairing'='official' needs exactly K=2 references, got K=3",
    ),
    (
        {"name": "mrpo", "prior": (1, 1)},
        r"option\(s\) \['prior'\] do not apply to weighting 'arwc'",
    ),
    ({"name": "mrpo", "weighting": "thompson", "prior": (0, 1)}, "option 'prior' must be two"),
    ({"name": "mrpo", "weighting": "thompson", "seed": 1.5}, "option 'seed' must be an int"),
    (
        {"name": "mrpo", "weighting": "sliding_window", "window": 0},
        "option 'window' must be an int",
    ),
    ({"name": "mrpo", "num_refs": 0}, "objective 'mrpo' needs at least 1 reference"),
]


@pytest.mark.parametrize(("kwargs", "message"), OPTION_ERRORS)
def test_invalid_options_raise_value_error_naming_them(kwargs: dict, message: str) -> None:
    kwargs = dict(kwargs)
    with pytest.raises(ValueError, match=message):
        get_objective(kwargs.pop("name"), **kwargs)


def test_fixed_weights_length_checked_at_call_time_too() -> None:
    objective = get_objective("multi_dpo", weighting="fixed", fixed_weights=[1, 2])
    with pytest.raises(ValueError, match="has 2 entries but there are K=3 references"):
        objective(*batch(num_refs=3))


def test_official_pairing_checked_at_call_time() -> None:
    with pytest.raises(ValueError, match="'official' needs exactly K=2 references, got K=3"):
        get_objective("mrpo", harmonic_pairing="official")(*batch(num_refs=3))


SHAPE_ERRORS = [
    (lambda p, r, rc, rr: (p[:, None], r, rc, rr), r"policy_chosen must have shape \(B,\)"),
    (lambda p, r, rc, rr: (p, r[:2], rc, rr), r"policy_rejected must have shape \(3,\)"),
    (lambda p, r, rc, rr: (p, r, rc[0], rr), r"ref_chosen must have shape \(K, B\)"),
    (lambda p, r, rc, rr: (p, r, rc[:, :2], rr), r"ref_chosen must have shape \(K, B\)"),
    (lambda p, r, rc, rr: (p, r, rc, rr[:1]), "ref_rejected has K=1 references but ref_chosen"),
    (lambda p, r, rc, rr: (p.long(), r, rc, rr), "policy_chosen must be a floating-point"),
    (lambda p, r, rc, rr: (p, r, rc.tolist(), rr), "ref_chosen must be a floating-point"),
    (lambda p, r, rc, rr: (p[:0], r[:0], rc[:, :0], rr[:, :0]), "B >= 1"),
]


@pytest.mark.parametrize(("mangle", "message"), SHAPE_ERRORS)
@pytest.mark.parametrize("name", ["dpo", "mrpo"])
def test_wrong_shapes_raise_value_error(name: str, mangle, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_objective(name)(*mangle(*batch()))


WEIGHT_ERRORS = [
    (torch.tensor([1.0, 2.0, 3.0]), r"weights must have shape \(K,\)=\(2,\)"),
    (torch.tensor([-1.0, 2.0]), "weights must be non-negative"),
    (torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), "all-zero row"),
    (torch.tensor([float("nan"), 1.0]), "weights must be finite"),
]


@pytest.mark.parametrize(("weights", "message"), WEIGHT_ERRORS)
def test_invalid_explicit_weights(weights: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_objective("mrpo")(*batch(), weights)


def test_dpo_refuses_explicit_weights() -> None:
    with pytest.raises(ValueError, match="objective 'dpo' uses reference 0 only"):
        get_objective("dpo")(*batch(), torch.tensor([0.5, 0.5]))


def test_explicit_weights_are_normalized_per_row() -> None:
    out = get_objective("multi_dpo")(*batch(), torch.tensor([1.0, 3.0]))
    assert out.weights.tolist() == [[0.25, 0.75]] * 3


def test_state_dict_of_another_objective_or_weighting_is_refused() -> None:
    sliding = get_objective("mrpo", weighting="sliding_window")
    with pytest.raises(ValueError, match="objective state is for 'mrpo', not 'multi_dpo'"):
        get_objective("multi_dpo", weighting="sliding_window").load_state_dict(sliding.state_dict())
    with pytest.raises(ValueError, match="weighting state is for 'sliding_window', not 'arwc'"):
        get_objective("mrpo").load_state_dict(sliding.state_dict())


def test_weighting_object_can_be_passed_directly() -> None:
    strategy = FixedWeights([1.0, 1.0])
    assert get_objective("mrpo", weighting=strategy).weighting is strategy
    with pytest.raises(ValueError, match="cannot be combined with a weighting object"):
        get_objective("mrpo", weighting=strategy, fixed_weights=[1, 2])
