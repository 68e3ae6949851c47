"""HH-RLHF transcript parsing and transcript-pair normalization on hand-made rows."""

from __future__ import annotations

import pytest

from mrpo.data.formats import normalize_row, parse_hh_transcript
from mrpo.data.types import PreferenceExample
from mrpo.data.validation import RowError


def hh(*turns: tuple[str, str]) -> str:
    """Build a transcript the way HH-RLHF writes it: "\\n\\nHuman: ..." per turn."""
    return "".join(f"\n\n{speaker}: {text}" for speaker, text in turns)


def pair(chosen: str, rejected: str, index: int = 0) -> PreferenceExample:
    return normalize_row({"chosen": chosen, "rejected": rejected}, "transcripts", index)


def reason_of(chosen, rejected) -> tuple[str, str]:
    with pytest.raises(RowError) as info:
        normalize_row({"chosen": chosen, "rejected": rejected}, "transcripts", 0)
    return info.value.reason, info.value.detail


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def test_single_turn_pair():
    ex = pair(
        hh(("Human", "Hi"), ("Assistant", "Hello!")), hh(("Human", "Hi"), ("Assistant", "Go.")), 7
    )
    assert ex == PreferenceExample(prompt=(user("Hi"),), chosen="Hello!", rejected="Go.", index=7)


def test_multi_turn_prompt_alternates_and_ends_with_user():
    shared = [
        ("Human", "How do I bake bread?"),
        ("Assistant", "Flour, water, yeast."),
        ("Human", "How long?"),
    ]
    ex = pair(hh(*shared, ("Assistant", " About an hour. ")), hh(*shared, ("Assistant", "Days.")))
    assert ex.prompt == (
        user("How do I bake bread?"),
        assistant("Flour, water, yeast."),
        user("How long?"),
    )
    # the leading space (here two) and trailing whitespace are formatting, not content
    assert (ex.chosen, ex.rejected) == ("About an hour.", "Days.")


def test_transcript_without_leading_blank_line_is_accepted():
    turns = parse_hh_transcript("Human: Hi\n\nAssistant: Yo")
    assert turns == (user("Hi"), assistant("Yo"))


def test_inline_human_without_blank_line_is_turn_text():
    turns = parse_hh_transcript(hh(("Human", "Q"), ("Assistant", "A.  Human: more?")))
    assert turns == (user("Q"), assistant("A.  Human: more?"))


def test_consecutive_assistant_turns_in_prompt_are_merged():
    shared = [("Human", "Q1"), ("Assistant", "A1"), ("Assistant", "A2"), ("Human", "Q2")]
    ex = pair(hh(*shared, ("Assistant", "good")), hh(*shared, ("Assistant", "bad")))
    assert ex.prompt == (user("Q1"), assistant("A1\n\nA2"), user("Q2"))


def test_two_final_assistant_turns_form_one_response():
    # As in the released harmless-base test split (e.g. line 1953): one transcript has two
    # Assistant turns at its end; they are one response after the shared prompt.
    chosen = hh(("Human", "Q"), ("Assistant", "Part one."), ("Assistant", "Part two."))
    rejected = hh(("Human", "Q"), ("Assistant", "Other."))
    ex = pair(chosen, rejected)
    assert ex.prompt == (user("Q"),)
    assert (ex.chosen, ex.rejected) == ("Part one.\n\nPart two.", "Other.")


def test_text_before_first_turn_is_malformed():
    reason, detail = reason_of(
        "preamble" + hh(("Human", "Q"), ("Assistant", "A")), hh(("Human", "Q"), ("Assistant", "B"))
    )
    assert reason == "malformed_transcript"
    assert "chosen" in detail and "preamble" in detail


def test_transcript_starting_with_assistant_is_malformed():
    reason, detail = reason_of(
        hh(("Human", "Q"), ("Assistant", "A")),
        hh(("Assistant", "Hi"), ("Human", "Q"), ("Assistant", "B")),
    )
    assert reason == "malformed_transcript"
    assert "rejected" in detail and "starts with an Assistant turn" in detail


def test_no_turns_is_malformed():
    assert (
        reason_of("just text", hh(("Human", "Q"), ("Assistant", "B")))[0] == "malformed_transcript"
    )


def test_transcripts_diverging_before_final_turn():
    chosen = hh(("Human", "Q"), ("Assistant", "A"), ("Human", "Q2"), ("Assistant", "good"))
    rejected = hh(("Human", "Q"), ("Assistant", "A"), ("Human", "other Q2"), ("Assistant", "bad"))
    reason, detail = reason_of(chosen, rejected)
    assert reason == "diverging_transcripts"
    assert "turn 3" in detail


def test_transcript_continuing_past_the_other_diverges():
    chosen = hh(("Human", "Q"), ("Assistant", "A"))
    rejected = hh(("Human", "Q"), ("Assistant", "A"), ("Human", "Q2"), ("Assistant", "B"))
    assert reason_of(chosen, rejected) == (
        "diverging_transcripts",
        "chosen and rejected differ at turn 2, before their final assistant turns",
    )


def test_empty_final_response():
    reason, detail = reason_of(
        hh(("Human", "Q"), ("Assistant", "")), hh(("Human", "Q"), ("Assistant", "B"))
    )
    assert (reason, detail) == ("empty_response", "the chosen response is empty")


def test_identical_responses_ignore_surrounding_whitespace():
    reason, _ = reason_of(
        hh(("Human", "Q"), ("Assistant", "Same")), hh(("Human", "Q"), ("Assistant", "Same  "))
    )
    assert reason == "identical_responses"


def test_transcript_ending_with_human_has_no_response():
    reason, detail = reason_of(
        hh(("Human", "Q"), ("Assistant", "A"), ("Human", "Q2")),
        hh(("Human", "Q"), ("Assistant", "B")),
    )
    assert reason == "response_not_assistant"
    assert "chosen" in detail


def test_empty_last_user_turn():
    reason, _ = reason_of(
        hh(("Human", " "), ("Assistant", "A")), hh(("Human", ""), ("Assistant", "B"))
    )
    assert reason == "empty_prompt"


def test_message_list_conversations_share_their_prompt():
    prompt = [{"role": "system", "content": "Be brief."}, user("Q")]
    ex = pair([*prompt, assistant("yes")], [*prompt, assistant("no")])
    assert ex.prompt == tuple(prompt)
    assert (ex.chosen, ex.rejected) == ("yes", "no")


def test_mixing_transcript_and_message_list_is_not_text():
    reason, _ = reason_of(hh(("Human", "Q"), ("Assistant", "A")), [user("Q"), assistant("B")])
    assert reason == "not_text"
