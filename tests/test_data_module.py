"""The data module: the test split's loader, and resuming mid-epoch whichever way Lightning
orders building the loader and restoring the checkpoint."""

from __future__ import annotations

from mrpo.data.collate import LengthGroupedBatchSampler
from mrpo.data.module import PreferenceDataModule
from mrpo.data.types import TokenizedPair


def pairs(n: int, offset: int = 0) -> list[TokenizedPair]:
    return [TokenizedPair((1,) * (i % 5 + 1), (2, 3), (4,), index=offset + i) for i in range(n)]


def module(test: int = 0) -> PreferenceDataModule:
    return PreferenceDataModule(
        pairs(12),
        pairs(4, 100),
        pad_token_id=0,
        ref_lookup=None,
        batch_size=2,
        eval_batch_size=2,
        seed=5,
        test_pairs=pairs(test, 200),
    )


def rows(loader) -> list[list[int]]:
    return [batch.index.tolist() for batch in loader]


def test_the_test_split_has_its_own_length_sorted_loader() -> None:
    data = module(test=5)
    test_rows = rows(data.test_dataloader())
    assert sorted(i for batch in test_rows for i in batch) == list(range(200, 205))
    assert [len(b) for b in test_rows] == [2, 2, 1]
    assert rows(data.val_dataloader()) != test_rows
    assert rows(module().test_dataloader()) == []


def test_a_resumed_epoch_skips_the_trained_batches_when_restored_before_the_loader() -> None:
    full = rows(module().train_dataloader())
    data = module()
    data.load_state_dict({"batches_done": 3})
    assert rows(data.train_dataloader()) == full[3:]


def test_a_resumed_epoch_skips_the_trained_batches_when_restored_after_the_loader() -> None:
    # Strategies that restore after setup (FSDP's ModelParallelStrategy, DeepSpeed) build the
    # training loader, and even its iterator, before the checkpoint's state is loaded.
    full = rows(module().train_dataloader())
    data = module()
    loader = data.train_dataloader()
    batches = iter(loader)
    data.load_state_dict({"batches_done": 3})
    assert [b.index.tolist() for b in batches] == full[3:]
    assert rows(loader) == full  # the next epoch is whole again


def test_the_sampler_reads_its_skip_when_the_first_batch_is_drawn() -> None:
    sampler = LengthGroupedBatchSampler([3, 1, 2, 5, 4, 6], 2, seed=0)
    whole = list(sampler)
    iterator = iter(sampler)
    sampler.skip_next(2)
    assert list(iterator) == whole[2:]
    assert list(sampler) == whole
