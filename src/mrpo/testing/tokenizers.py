"""Tiny tokenizers built offline, for tests that need real tokenizers and chat templates.

Each kind is a byte-level BPE (any text encodes, nothing is unknown) trained in-process on a
small built-in corpus, with its own special tokens and chat template, so that two kinds give
different token ids for the same text and render conversations differently -- the situation of
a policy and a reference model from different families.

- ``"chatml"``: 384 tokens; ``<|im_start|>role\\n...<|im_end|>\\n``; eos ``<|im_end|>``, pad
  ``<|endoftext|>`` (the layout of SmolLM2 and Qwen2.5).
- ``"zephyr"``: 320 tokens; ``<|role|>\\n...</s>\\n``; bos ``<s>`` (added when encoding with
  special tokens), eos ``</s>``, pad ``<pad>``, unk ``<unk>``.

Training is deterministic, so ids are the same in every process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

_CORPUS = (
    "Human: Can you help me write a short poem about the sea?",
    "Assistant: Sure! The sea is wide and blue, it sings the whole night through.",
    "User: What is the capital of France? Assistant: The capital of France is Paris.",
    "I am not able to help with that, but I can suggest something safer instead.",
    "Please explain how photosynthesis works in simple words for a student.",
    "Plants use sunlight, water and carbon dioxide to make sugar and oxygen.",
    "The quick brown fox jumps over the lazy dog. How are you doing today?",
    "Thank you for asking. I think the answer depends on what you want to do.",
    "Natalia sold clips to 48 of her friends in April, and half as many in May.",
    "How many clips did she sell altogether? She sold 48 + 24 = 72 clips. #### 72",
    "What happens if you eat watermelon seeds? Nothing happens; they pass through.",
    "system: You are a helpful, honest and harmless assistant. user: hi there!",
)


@dataclass(frozen=True)
class _Spec:
    vocab_size: int
    corpus: tuple[str, ...]
    special_tokens: tuple[str, ...]
    named_tokens: tuple[tuple[str, str], ...]  # (attribute, token) for the transformers wrapper
    chat_template: str
    bos: str | None = None  # prepended by the post-processor when add_special_tokens=True


_SPECS = {
    "chatml": _Spec(
        vocab_size=384,
        corpus=_CORPUS,
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        named_tokens=(("eos_token", "<|im_end|>"), ("pad_token", "<|endoftext|>")),
        chat_template=(
            "{% for message in messages %}"
            "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
            "{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
        ),
    ),
    "zephyr": _Spec(
        vocab_size=320,
        corpus=tuple(reversed(_CORPUS[2:])),
        special_tokens=("<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"),
        named_tokens=(
            ("unk_token", "<unk>"),
            ("bos_token", "<s>"),
            ("eos_token", "</s>"),
            ("pad_token", "<pad>"),
        ),
        chat_template=(
            "{% for message in messages %}"
            "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
            "{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
        ),
        bos="<s>",
    ),
}

TOKENIZER_KINDS = tuple(_SPECS)


@functools.cache
def _trained_json(kind: str) -> str:
    """Train the BPE of ``kind`` once per process; cached as immutable JSON."""
    spec = _SPECS[kind]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(spec.corpus, trainer)
    if spec.bos is not None:
        bos_id = tok.token_to_id(spec.bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A $B", special_tokens=[(spec.bos, bos_id)]
        )
    return tok.to_str()


def make_tiny_tokenizer(kind: str = "chatml") -> PreTrainedTokenizerFast:
    """A fresh tiny tokenizer of ``kind`` (one of `TOKENIZER_KINDS`); see the module doc.

    Each call returns a new object (callers may change padding side or tokens freely); the
    trained model is built once per process.
    """
    if kind not in _SPECS:
        raise ValueError(f"unknown tiny tokenizer kind {kind!r}; expected one of {TOKENIZER_KINDS}")
    spec = _SPECS[kind]
    named = dict(spec.named_tokens)
    extra = [t for t in spec.special_tokens if t not in named.values()]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_json(kind)),
        chat_template=spec.chat_template,
        additional_special_tokens=extra,
        model_max_length=4096,
        **named,
    )
