"""Reference scoring split across ranks: each rank scores 1/N of the rows, one entry results."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from mrpo.data.types import PreferenceExample
from mrpo.references import ReferenceEnsemble, ReferenceSpec
from mrpo.references import ensemble as ensemble_module
from mrpo.references.cache_entry import decode_entry
from mrpo.references.sharding import RankInfo, ShardStore, ShardTimeoutError, detect_ranks
from mrpo.testing.runs import write_tiny_model

ROWS, BATCH = 10, 2


@pytest.fixture(autouse=True)
def _one_load_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests run ranks as threads of one process (real ranks are processes). Older
    # transformers (4.56, the declared floor) load weights under accelerate's
    # init_empty_weights, which patches torch.nn.Module for the whole process: two loads at once
    # can leave it patched, and every later module is built on the meta device.
    lock = threading.Lock()
    load = ensemble_module.load_model

    def locked_load(*args, **kwargs):
        with lock:
            return load(*args, **kwargs)

    monkeypatch.setattr(ensemble_module, "load_model", locked_load)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(write_tiny_model(tmp_path_factory.mktemp("model")))


def examples() -> list[PreferenceExample]:
    return [
        PreferenceExample(
            prompt=({"role": "user", "content": f"Tell me about {i}." + " More." * (i % 4)},),
            chosen=f"{i} is a number." + " Indeed." * (i % 3),
            rejected=f"No {i}.",
            index=2 * i + 5,  # gaps, as in a filtered data set
        )
        for i in range(ROWS)
    ]


TWO_REFS = (ReferenceSpec("self"), ReferenceSpec("pirate", system_prompt="Talk like a pirate."))


def make(model_dir, cache, ranks=None, specs=TWO_REFS, **kwargs) -> ReferenceEnsemble:
    return ReferenceEnsemble(
        specs,
        policy_source=model_dir,
        max_length=64,
        cache_dir=cache,
        batch_size=BATCH,
        device="cpu",
        ranks=ranks,
        **kwargs,
    )


def assert_same(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.index, y.index)
        assert torch.equal(x.chosen_tokens, y.chosen_tokens)
        assert torch.equal(x.rejected_tokens, y.rejected_tokens)
        # Rows are batched with other neighbours than in one process: padding and the logits
        # window differ, so sums of ~100 token log-probs may differ in their last float32 bit.
        torch.testing.assert_close(x.chosen, y.chosen, atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(x.rejected, y.rejected, atol=1e-5, rtol=1e-6)


def test_two_ranks_score_half_each_and_build_the_single_process_entry(model_dir, tmp_path):
    single = make(model_dir, tmp_path / "one").precompute(examples(), progress=False)
    results: dict[int, object] = {}

    def rank(r: int) -> None:
        ens = make(model_dir, tmp_path / "split", RankInfo(r, 2, r), shard_timeout=120)
        results[r] = ens.precompute(examples(), progress=False)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert set(results) == {0, 1}
    share = math.ceil(ROWS / 2 / BATCH)  # forward passes of one rank's 5 rows, per reference
    assert single.stats.forward_passes == 2 * math.ceil(ROWS / BATCH)
    for r in (0, 1):
        assert results[r].stats.forward_passes == 2 * share
        assert results[r].stats.model_loads == 1  # both references share the loaded weights
        assert_same(results[r].logps, single.logps)
    # The shards are gone once joined; a later single-process run reads the joined entries.
    assert not any((tmp_path / "split" / "shards").glob("*/*.safetensors"))
    later_ens = make(model_dir, tmp_path / "split")
    key = later_ens.fingerprint(1, examples())
    info = decode_entry(later_ens.cache.path(key).read_bytes(), key)[1]
    assert info["meta"] == {"reference": "pirate", "source": model_dir, "rows": ROWS}
    later = later_ens.precompute(examples(), progress=False)
    assert (later.stats.hits, later.stats.forward_passes) == (2, 0)
    assert_same(later.logps, single.logps)


def test_a_missing_rank_times_out_by_name_and_its_shard_is_reused(model_dir, tmp_path):
    cache, one_ref = tmp_path / "cache", TWO_REFS[:1]
    lone = make(model_dir, cache, RankInfo(1, 2, 0), one_ref, shard_timeout=0.2)
    with pytest.raises(ShardTimeoutError, match=r"waited 0.2 s for .* shards of ranks \[0\]"):
        lone.precompute(examples(), progress=False)
    key = lone.fingerprint(0, examples())
    kept = ShardStore(lone.cache, key, 2).read(1)
    assert kept is not None and kept.index.tolist() == [2 * i + 5 for i in range(1, ROWS, 2)]

    # A re-run of rank 0 alone scores only its own rows and completes the entry with the shard
    # rank 1 left; the result equals one process scoring everything.
    rank0 = make(model_dir, cache, RankInfo(0, 2, 0), one_ref, shard_timeout=0.2)
    pre = rank0.precompute(examples(), progress=False)
    assert (pre.stats.misses, pre.stats.forward_passes) == (1, math.ceil(ROWS / 2 / BATCH))
    single = make(model_dir, tmp_path / "one", specs=one_ref).precompute(examples(), progress=False)
    assert_same(pre.logps, single.logps)
    assert ShardStore(lone.cache, key, 2).missing() == [0, 1]  # joined, then deleted


def test_a_cached_entry_needs_no_rank_to_score(model_dir, tmp_path):
    make(model_dir, tmp_path).precompute(examples(), progress=False)
    pre = make(model_dir, tmp_path, RankInfo(1, 3, 1), shard_timeout=0.1).precompute(
        examples(), progress=False
    )
    assert (pre.stats.hits, pre.stats.misses, pre.stats.forward_passes) == (2, 0, 0)


def test_more_ranks_than_rows(model_dir, tmp_path):
    few = examples()[:1]
    out = {}

    def rank(r: int) -> None:
        ens = make(model_dir, tmp_path, RankInfo(r, 3, r), shard_timeout=120)
        out[r] = ens.precompute(few, progress=False)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [out[r].stats.model_loads for r in range(3)] == [1, 0, 0]  # empty shards load nothing
    assert all(len(out[r].logps[0]) == 1 for r in range(3))


def test_detect_ranks_reads_the_launcher_environment(monkeypatch):
    for var in ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    assert detect_ranks() == RankInfo(0, 1, 0)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert detect_ranks() == RankInfo(3, 4, 1)


@pytest.mark.parametrize(("rank", "world"), [(2, 2), (-1, 2), (0, 0)])
def test_rank_outside_the_world_is_refused(rank, world):
    with pytest.raises(ValueError, match=f"rank {rank} is not in a world of size {world}"):
        RankInfo(rank, world)
