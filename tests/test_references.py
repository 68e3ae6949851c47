"""Tests for the reference ensemble (mrpo.references): cross-tokenizer scoring, the cache
in a sweep, prompted and ``self`` references, and live scoring."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import torch

from mrpo.data.collate import PreferenceCollator
from mrpo.data.tokenize import tokenize_pairs
from mrpo.data.types import PreferenceExample, TokenizedPair
from mrpo.models import LoraConfig, load_model, load_tokenizer
from mrpo.references import (
    LiveReferences,
    MixedReferences,
    MovingReferences,
    ReferenceEnsemble,
    ReferenceSpec,
    RefTable,
    data_fingerprint,
    tokenizer_fingerprint,
)
from mrpo.references.cache_entry import numerics_label
from mrpo.references.logps import RefLogps
from mrpo.testing.models import make_tiny_model, save_tiny_model
from mrpo.testing.tokenizers import make_tiny_tokenizer

PIRATE = "You are a pirate. Answer like one."


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models run fastest on one thread; several threads on a busy CPU only contend.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Two tiny models with different tokenizers and chat templates, saved as directories."""
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for name, kind, seed in [("chatml", "chatml", 0), ("zephyr", "zephyr", 1)]:
        tok = make_tiny_tokenizer(kind)
        save_tiny_model(root / name, make_tiny_model(len(tok), seed=seed), tok)
        dirs[name] = str(root / name)
    return dirs


def make_examples(n: int = 6) -> list[PreferenceExample]:
    # Row indices with gaps, as in a filtered data set; varied lengths exercise padding.
    return [
        PreferenceExample(
            prompt=({"role": "user", "content": f"What is {i} plus {i}?" + " Please." * i},),
            chosen=f"It is {2 * i}." + " Sure!" * (i % 3),
            rejected=f"I do not know about {i}.",
            index=3 * i + 1,
        )
        for i in range(n)
    ]


def ensemble(model_dirs, tmp_path, specs, **kwargs) -> ReferenceEnsemble:
    options = dict(
        policy_source=model_dirs["chatml"],
        max_length=96,
        cache_dir=tmp_path / "refcache",
        batch_size=4,
        device="cpu",
    )
    options.update(kwargs)
    return ReferenceEnsemble(specs, **options)


def naive_response_logp(model, tokenizer, example, response, system_prompt=None) -> tuple:
    """Unbatched, unpadded log p(response | prompt) from the model's own chat template."""
    messages = list(example.prompt)
    if system_prompt is not None:
        messages = [{"role": "system", "content": system_prompt}, *messages]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": response}], tokenize=False
    )
    assert full.startswith(prompt)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + r_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    total = sum(logp[t - 1, ids[0, t]].item() for t in range(len(p_ids), ids.shape[1]))
    return total, len(r_ids)


# --- cached mode ---------------------------------------------------------------------------


def test_references_with_different_tokenizers_match_direct_scoring(model_dirs, tmp_path):
    specs = [ReferenceSpec("chatml"), ReferenceSpec("zephyr", source=model_dirs["zephyr"])]
    ens = ensemble(model_dirs, tmp_path, specs)
    examples = make_examples()
    pre = ens.precompute(examples, progress=False)
    assert [len(v) for v in pre.logps] == [6, 6]
    counts = {}
    for k, name in enumerate(["chatml", "zephyr"]):
        model = load_model(model_dirs[name], trainable=False)
        tok = load_tokenizer(model_dirs[name])
        got = pre.logps[k].select([ex.index for ex in examples])
        for i, ex in enumerate(examples):
            for side, text in (("chosen", ex.chosen), ("rejected", ex.rejected)):
                want, n = naive_response_logp(model, tok, ex, text)
                assert getattr(got, side)[i].item() == pytest.approx(want, rel=1e-5, abs=1e-4)
                assert getattr(got, f"{side}_tokens")[i].item() == n
        counts[name] = got.chosen_tokens
    # The two references really tokenized the text their own way.
    assert not torch.equal(counts["chatml"], counts["zephyr"])


def test_prompted_reference_differs_and_shares_the_loaded_model(model_dirs, tmp_path):
    specs = [ReferenceSpec("plain"), ReferenceSpec("pirate", system_prompt=PIRATE)]
    ens = ensemble(model_dirs, tmp_path, specs)
    examples = make_examples()
    pre = ens.precompute(examples, progress=False)
    assert (pre.stats.model_loads, pre.stats.misses) == (1, 2)
    plain, pirate = pre.logps
    assert torch.equal(plain.chosen_tokens, pirate.chosen_tokens)  # same response tokens
    assert (plain.chosen - pirate.chosen).abs().min() > 1e-4  # other prompt, other values
    model, tok = load_model(model_dirs["chatml"]), load_tokenizer(model_dirs["chatml"])
    want, _ = naive_response_logp(model, tok, examples[2], examples[2].chosen, PIRATE)
    assert pirate.chosen[2].item() == pytest.approx(want, rel=1e-5, abs=1e-4)
    assert ens.fingerprint(0, examples).digest != ens.fingerprint(1, examples).digest


def test_sweep_over_k_computes_each_reference_once(model_dirs, tmp_path, caplog):
    pool = [
        ReferenceSpec("self"),
        ReferenceSpec("pirate", system_prompt=PIRATE),
        ReferenceSpec("zephyr", source=model_dirs["zephyr"], length_normalize=True),
    ]
    examples = make_examples()
    seen = []
    with caplog.at_level(logging.INFO, logger="mrpo.references"):
        for k in (1, 2, 3, 3):
            stats = ensemble(model_dirs, tmp_path, pool[:k]).precompute(examples, progress=False)
            s = stats.stats
            seen.append((s.hits, s.misses, s.model_loads, s.forward_passes))
    batches = math.ceil(6 / 4)
    assert seen == [
        (0, 1, 1, batches),  # K=1: self
        (1, 1, 1, batches),  # K=2: self from the cache; pirate loads the same weights once
        (2, 1, 1, batches),  # K=3: only zephyr is new
        (3, 0, 0, 0),  # a repeated job: everything from the cache, no model loaded
    ]
    assert "reference zephyr: computed 6 rows in" in caplog.text
    assert caplog.text.count("reference self: cache hit (6 rows") == 3


def test_self_resolves_to_the_policy_source(model_dirs, tmp_path):
    examples = make_examples(3)
    by_self = ensemble(model_dirs, tmp_path, [ReferenceSpec("self")])
    explicit = ensemble(model_dirs, tmp_path, [ReferenceSpec("init", source=model_dirs["chatml"])])
    assert by_self.resolved[0].weights == model_dirs["chatml"]
    assert by_self.fingerprint(0, examples) == explicit.fingerprint(0, examples)
    by_self.precompute(examples, progress=False)
    assert explicit.precompute(examples, progress=False).stats.hits == 1
    with pytest.raises(ValueError, match="'self'"):
        ensemble(model_dirs, tmp_path, [ReferenceSpec("self")], policy_source=None)


def test_key_follows_everything_that_changes_the_numbers(model_dirs, tmp_path):
    examples = make_examples(4)
    base = ensemble(model_dirs, tmp_path, [ReferenceSpec("self")]).fingerprint(0, examples)
    # Same rows in another order: same entry.
    again = ensemble(model_dirs, tmp_path, [ReferenceSpec("self")])
    assert again.fingerprint(0, examples[::-1]) == base
    variants = {
        "max_length": ({}, {"max_length": 40}),
        "max_prompt_length": ({}, {"max_prompt_length": 20}),
        "system_prompt": ({"system_prompt": PIRATE}, {}),
        "dtype": ({"dtype": "bfloat16"}, {}),
        "chat_template": ({"chat_template": "{{ messages[0]['content'] }}"}, {}),
        "model": ({"source": model_dirs["zephyr"], "tokenizer": model_dirs["chatml"]}, {}),
    }
    for part, (spec_kw, ens_kw) in variants.items():
        ens = ensemble(model_dirs, tmp_path, [ReferenceSpec("r", **spec_kw)], **ens_kw)
        changed = ens.key(0, ens.tokenize(0, examples).pairs)
        assert changed.digest != base.digest, part
        differing = {f for f in base.parts() if base.parts()[f] != changed.parts()[f]}
        assert part in differing, part
    edited = [dataclasses.replace(examples[0], chosen="Something else."), *examples[1:]]
    assert again.fingerprint(0, edited).data != base.data
    tokenizer_swap = ensemble(
        model_dirs, tmp_path, [ReferenceSpec("r", tokenizer=model_dirs["zephyr"])]
    )
    assert tokenizer_swap.fingerprint(0, examples).tokenizer != base.tokenizer


def test_key_records_the_libraries_and_device_that_computed_the_numbers(
    model_dirs, tmp_path, monkeypatch
):
    import importlib.metadata

    examples = make_examples(2)
    base = ensemble(model_dirs, tmp_path, [ReferenceSpec("self")]).fingerprint(0, examples)
    assert base.numerics == f"torch {torch.__version__}; transformers " + (
        f"{importlib.metadata.version('transformers')}; cpu"
    )
    real_version = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda name: "99.0" if name == "transformers" else real_version(name),
    )
    upgraded = ensemble(model_dirs, tmp_path, [ReferenceSpec("self")]).fingerprint(0, examples)
    differing = {f for f in base.parts() if base.parts()[f] != upgraded.parts()[f]}
    assert differing == {"numerics"} and "transformers 99.0" in upgraded.numerics
    assert upgraded.digest != base.digest
    assert numerics_label("cuda:1", "nf4").endswith("; cuda")
    assert "bitsandbytes " in numerics_label("cpu", "nf4")


def test_fused_head_off_scores_references_from_logits_too(model_dirs, tmp_path, monkeypatch):
    import mrpo.references.scoring as scoring

    examples = make_examples(3)
    asked = []
    real = scoring.batch_sequence_logprobs
    monkeypatch.setattr(
        scoring,
        "batch_sequence_logprobs",
        lambda *a, **kw: asked.append(kw["fused_head"]) or real(*a, **kw),
    )
    fused = ensemble(model_dirs, tmp_path, [ReferenceSpec("self")])
    logits = ensemble(model_dirs, tmp_path, [ReferenceSpec("self")], fused_head=False)
    first = fused.precompute(examples, progress=False).logps[0]
    assert asked and all(asked)
    asked.clear()
    second = logits.precompute(examples, progress=False).logps[0]
    assert asked and not any(asked)  # computed again, from logits: another cache entry
    assert logits.fingerprint(0, examples).numerics.endswith("; logits head")
    torch.testing.assert_close(first.chosen, second.chosen, atol=1e-5, rtol=1e-6)


def score_references(mode: str, model_dirs, cache_dir, examples, fused_head: bool) -> None:
    """Score ``examples`` with a ``self`` reference the way ``mode`` does in a run."""
    if mode == "cached":
        ensemble(model_dirs, cache_dir, [ReferenceSpec("self")], fused_head=fused_head).precompute(
            examples, progress=False
        )
        return
    tokenizer = make_tiny_tokenizer("chatml")
    batch = PreferenceCollator(tokenizer.pad_token_id)(
        tokenize_pairs(examples, tokenizer, max_length=96).pairs
    )
    if mode == "live":
        ens = ensemble(model_dirs, cache_dir, [ReferenceSpec("self")], fused_head=fused_head)
        LiveReferences(ens, examples=examples)(batch)
        return
    ens = ensemble(
        model_dirs, cache_dir, [ReferenceSpec("trdpo", source="moving")], fused_head=fused_head
    )
    moving = MovingReferences(ens, load_model(model_dirs["chatml"]))
    MixedReferences(ens, moving, examples)(batch)


@pytest.mark.parametrize("mode", ["cached", "live", "moving"])
def test_fused_head_off_never_splits_a_references_head(model_dirs, tmp_path, monkeypatch, mode):
    # model.fused_lm_head=false must reach every reference scoring path: with it off, no
    # reference model's LM head is split off for the fused path (logits only).
    import mrpo.logprobs.packed_logprobs as packed
    import mrpo.logprobs.sequence as sequence

    split: list[torch.nn.Module] = []
    for module in (sequence, packed):
        real = module.split_lm_head
        monkeypatch.setattr(
            module, "split_lm_head", lambda model, real=real: split.append(model) or real(model)
        )
    examples = make_examples(3)
    for fused_head in (True, False):
        split.clear()
        score_references(mode, model_dirs, tmp_path / f"fused-{fused_head}", examples, fused_head)
        assert bool(split) == fused_head, f"{mode}: fused_head={fused_head}"


def test_damaged_entry_is_recomputed(model_dirs, tmp_path, caplog):
    examples = make_examples(3)
    ens = ensemble(model_dirs, tmp_path, [ReferenceSpec("self")])
    first = ens.precompute(examples, progress=False).logps[0]
    path = ens.cache.path(ens.fingerprint(0, examples))
    path.write_bytes(path.read_bytes()[:-10])
    with caplog.at_level(logging.WARNING, logger="mrpo.references.cache"):
        pre = ens.precompute(examples, progress=False)
    assert "damaged reference cache file" in caplog.text
    assert (pre.stats.hits, pre.stats.misses) == (0, 1)
    assert torch.equal(pre.logps[0].chosen, first.chosen)


def test_table_applies_length_normalization_per_reference(model_dirs, tmp_path):
    specs = [
        ReferenceSpec("self"),
        ReferenceSpec("zephyr", source=model_dirs["zephyr"], length_normalize=True),
    ]
    ens = ensemble(model_dirs, tmp_path, specs)
    examples = make_examples()
    table = ens.table(examples, progress=False)
    logps = ens.precompute(examples, progress=False).logps
    index = torch.tensor([16, 1, 7])
    chosen, rejected = table(index)
    assert chosen.shape == rejected.shape == (2, 3) and chosen.dtype == torch.float32
    rows = logps[0].select(index)
    assert torch.equal(chosen[0], rows.chosen)
    z = logps[1].select(index)
    assert torch.allclose(rejected[1], z.rejected / z.rejected_tokens.float())


# --- live mode -----------------------------------------------------------------------------


def test_cached_and_live_agree(model_dirs, tmp_path):
    specs = [
        ReferenceSpec("self"),
        ReferenceSpec("pirate", system_prompt=PIRATE),
        ReferenceSpec("zephyr", source=model_dirs["zephyr"], length_normalize=True),
    ]
    ens = ensemble(model_dirs, tmp_path, specs, batch_size=2)
    examples = make_examples()
    table = ens.table(examples, progress=False)
    live = LiveReferences(ens, examples=examples)
    subset = [examples[4], examples[0], examples[3]]
    live_c, live_r = live.score(subset)
    want_c, want_r = table.lookup(torch.tensor([ex.index for ex in subset]))
    assert live_c.shape == (3, 3)
    torch.testing.assert_close(live_c, want_c, rtol=0, atol=1e-5)
    torch.testing.assert_close(live_r, want_r, rtol=0, atol=1e-5)
    # Through a policy batch (the policy's own token ids are ignored, only the index is used).
    policy_tok = make_tiny_tokenizer("chatml")
    pairs = tokenize_pairs(subset, policy_tok, max_length=96).pairs
    batch = PreferenceCollator(policy_tok.pad_token_id)(pairs)
    got_c, got_r = live(batch)
    torch.testing.assert_close(got_r, want_r, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_c, want_c, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="rows"):
        LiveReferences(ens)(batch)


def test_live_self_uses_the_lora_policy_with_adapters_disabled(model_dirs, tmp_path):
    examples = make_examples(4)
    ens = ensemble(model_dirs, tmp_path, [ReferenceSpec("self")])
    cached = ens.table(examples, progress=False)
    policy = load_model(model_dirs["chatml"], lora=LoraConfig(enabled=True, r=4))
    with torch.no_grad():  # make the adapters change the outputs, as after training
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    policy.train()
    loads = ens.stats.model_loads
    live = LiveReferences(ens, policy=policy)
    assert live.uses_policy == (True,) and ens.stats.model_loads == loads
    live_c, _ = live.score(examples)
    want_c, _ = cached.lookup(torch.tensor([ex.index for ex in examples]))
    torch.testing.assert_close(live_c, want_c, rtol=0, atol=1e-5)
    assert policy.training  # mode restored
    # Adapters are active again afterwards: the policy itself scores differently.
    with torch.no_grad():
        policy_c = ens.score(0, policy, ens.tokenize(0, examples)).chosen
    assert (policy_c - live_c[0]).abs().max() > 1e-3


def test_live_self_without_lora_loads_its_own_copy(model_dirs, tmp_path):
    ens = ensemble(model_dirs, tmp_path, [ReferenceSpec("self")])
    live = LiveReferences(ens, policy=load_model(model_dirs["chatml"]))
    assert live.uses_policy == (False,) and ens.stats.model_loads == 1


# --- building blocks and validation --------------------------------------------------------


def test_table_lookup_with_gaps_repeats_and_missing_rows():
    def logps(index, chosen, tokens):
        n = len(index)
        return RefLogps(
            torch.tensor(index),
            torch.tensor(chosen),
            torch.tensor(chosen) - 1,
            torch.tensor(tokens),
            torch.full((n,), 2),
        )

    a = logps([5, 2, 9], [-1.0, -2.0, -3.0], [1, 2, 3])
    b = logps([9, 5, 2], [-6.0, -4.0, -8.0], [3, 2, 4])
    table = RefTable.from_logps([a, b], length_normalize=[False, True], names=["a", "b"])
    chosen, rejected = table(torch.tensor([9, 2, 9]))
    assert chosen.tolist() == [[-3.0, -2.0, -3.0], [-2.0, -2.0, -2.0]]
    assert rejected.tolist() == [[-4.0, -3.0, -4.0], [-3.5, -4.5, -3.5]]
    with pytest.raises(ValueError, match=r"index \[3\]"):
        table(torch.tensor([3]))
    other = logps([5, 2, 8], [-1.0, -2.0, -3.0], [1, 1, 1])
    with pytest.raises(ValueError, match="'b' covers other rows"):
        RefTable.from_logps([a, other], length_normalize=[False, False], names=["a", "b"])


def test_tokenizer_fingerprint_identifies_the_vocabulary(model_dirs):
    chatml = make_tiny_tokenizer("chatml")
    assert tokenizer_fingerprint(chatml) == tokenizer_fingerprint(make_tiny_tokenizer("chatml"))
    assert tokenizer_fingerprint(load_tokenizer(model_dirs["chatml"])) == tokenizer_fingerprint(
        chatml
    )
    assert tokenizer_fingerprint(chatml) != tokenizer_fingerprint(make_tiny_tokenizer("zephyr"))
    chatml(["a", "a b c"], padding=True, truncation=True, max_length=2)
    assert tokenizer_fingerprint(chatml) == tokenizer_fingerprint(make_tiny_tokenizer("chatml"))


def test_data_fingerprint_covers_ids_and_indices_not_order():
    p = [TokenizedPair((1, 2), (3,), (4,), 0), TokenizedPair((5,), (6, 7), (8,), 4)]
    assert data_fingerprint(p) == data_fingerprint(p[::-1])
    assert data_fingerprint(p) != data_fingerprint([p[0], dataclasses.replace(p[1], index=5)])
    assert data_fingerprint(p) != data_fingerprint(
        [p[0], dataclasses.replace(p[1], chosen_ids=(6,))]
    )
    # Moving a token from the prompt to the response changes the scored span.
    moved = TokenizedPair((1,), (2, 3), (2, 4), 0)
    assert data_fingerprint(p[:1]) != data_fingerprint([moved])


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"name": ""}, "non-empty"),
        ({"name": "r", "dtype": "float8"}, "unknown dtype"),
        ({"name": "r", "chat_template": "  "}, "chat_template is empty"),
        ({"name": "r", "source": ""}, "source"),
    ],
)
def test_bad_reference_specs(kwargs, msg, model_dirs, tmp_path):
    with pytest.raises(ValueError, match=msg):
        ReferenceSpec(**kwargs).check()
    with pytest.raises(ValueError, match=msg):  # the ensemble checks its specs
        ensemble(model_dirs, tmp_path, [ReferenceSpec(**kwargs)])


def test_bad_ensembles_and_rows_fail_before_loading(model_dirs, tmp_path):
    with pytest.raises(ValueError, match="unique"):
        ensemble(model_dirs, tmp_path, [ReferenceSpec("a"), ReferenceSpec("a")])
    with pytest.raises(ValueError, match="at least one"):
        ensemble(model_dirs, tmp_path, [])
    with pytest.raises(ValueError, match="batch_size"):
        ensemble(model_dirs, tmp_path, [ReferenceSpec("a")], batch_size=0)
    ens = ensemble(model_dirs, tmp_path, [ReferenceSpec("a")])
    examples = make_examples(3)
    repeated = [*examples, dataclasses.replace(examples[0], chosen="Other.")]
    with pytest.raises(ValueError, match=r"repeated: \[1\]"):
        ens.precompute(repeated, progress=False)
    with pytest.raises(ValueError, match="max_prompt_length"):
        ensemble(model_dirs, tmp_path, [ReferenceSpec("a")], max_prompt_length=200).precompute(
            examples, progress=False
        )
    assert ens.stats.model_loads == 0


def test_no_rows_needs_no_model(model_dirs, tmp_path):
    ens = ensemble(model_dirs, tmp_path, [ReferenceSpec("self")])
    pre = ens.precompute([], progress=False)
    assert len(pre.logps[0]) == 0 and pre.stats.model_loads == 0
    assert ens.table([], progress=False).chosen.shape == (1, 0)
