"""sollol_serve.analysis.profile: task type, priority, output cap, size and complexity."""

from __future__ import annotations

import hashlib

import pytest

from sollol_serve.analysis.profile import (
    DEFAULT_OUTPUT_TOKENS,
    DEFAULT_PRIORITY,
    classify_task,
    complexity_of,
    conversation_of,
    estimate_tokens,
    output_cap,
    parse_priority,
    profile_request,
    prompt_text,
)
from sollol_serve.protocol import BadRequest


def _chat(*contents: str, model: str = "llama3.2", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": c} for c in contents], **extra}


# --- classify_task --------------------------------------------------------------------
@pytest.mark.parametrize("op", ["embed", "embeddings"])
def test_embedding_from_op_whatever_the_text(op):
    assert classify_task(op, "please summarize this") == "embedding"
    assert profile_request("ollama", op, {"model": "m", "input": "summarize this"}, 5).task_type == "embedding"


@pytest.mark.parametrize(
    ("text", "task"),
    [
        ("Summarize this article for me", "summarization"),
        ("Please summarise the meeting", "summarization"),
        ("Give me the key points of this memo", "summarization"),
        ("TL;DR please", "summarization"),
        ("Classify this ticket", "classification"),
        ("What is the sentiment of this review?", "classification"),
        ("Is this an apple or a pear?", "classification"),
        ("Categorize these items", "classification"),
        ("Extract the dates from this text", "extraction"),
        ("List all the names mentioned", "extraction"),
        ("Return the fields as JSON", "extraction"),
        ("Analyze the results", "analysis"),
        ("Compare Python and Go", "analysis"),
        ("Explain why the sky is blue, step by step", "analysis"),
        ("Write a haiku about autumn", "generation"),
        ("", "generation"),
        ("summaries", "generation"),  # word boundaries: not "summary"
    ],
)
def test_classify_task_from_text(text, task):
    assert classify_task("chat", text) == task
    assert classify_task("generate", text) == task


def test_classify_task_first_cue_wins():
    # Both a summarization cue and an analysis cue: summarization is checked first.
    assert classify_task("chat", "Analyze and then summarize the report") == "summarization"
    assert classify_task("chat", "Extract the numbers and compare them") == "extraction"


def test_task_comes_from_last_user_message_not_model_or_other_turns():
    body = {
        "model": "summarizer-classify-extract",
        "messages": [
            {"role": "system", "content": "You summarize and classify documents."},
            {"role": "user", "content": "Summarize this text"},
            {"role": "assistant", "content": "Let me analyze that."},
            {"role": "user", "content": "Thanks! Now write a limerick."},
        ],
    }
    assert profile_request("ollama", "chat", body, 5).task_type == "generation"
    body["messages"].append({"role": "assistant", "content": "Summary: ..."})
    assert profile_request("ollama", "chat", body, 5).task_type == "generation"
    body["messages"][3]["content"] = "Now extract the names"
    assert profile_request("ollama", "chat", body, 5).task_type == "extraction"


def test_model_name_alone_does_not_set_task():
    body = {"model": "summarize-7b", "prompt": "hello there", "system": "summarize everything"}
    assert profile_request("ollama", "generate", body, 5).task_type == "generation"
    body["prompt"] = "please classify this"
    assert profile_request("ollama", "generate", body, 5).task_type == "classification"


def test_task_from_openai_content_parts():
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:,"}}, {"type": "text", "text": "summarize the image"}]}]}
    assert profile_request("openai", "chat", body, 5).task_type == "summarization"


# --- prompt_text / estimate_tokens ----------------------------------------------------
def test_prompt_text_per_op():
    body = {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "u1"},
                         {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                         "junk"]}
    assert prompt_text("chat", body) == ("sys\nu1\na b", "a b")
    assert prompt_text("generate", {"system": "S", "prompt": "P"}) == ("S\nP", "P")
    assert prompt_text("generate", {"prompt": "P"}) == ("P", "P")
    assert prompt_text("embed", {"input": ["x", 3, "y"]}) == ("x\ny", "")
    assert prompt_text("embeddings", {"prompt": "z"}) == ("z", "")


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100), ("x" * 401, 101)])
def test_estimate_tokens(text, tokens):
    assert estimate_tokens(text) == tokens


# --- parse_priority -------------------------------------------------------------------
def test_parse_priority_default():
    assert DEFAULT_PRIORITY == 5
    assert parse_priority(None, None) == 5
    assert parse_priority(None, "") == 5


def test_parse_priority_body_wins_over_header():
    assert parse_priority(3, "9") == 3
    assert parse_priority("8", "2") == 8


def test_parse_priority_header_used_when_body_absent():
    assert parse_priority(None, "9") == 9
    assert parse_priority(None, " 7 ") == 7


@pytest.mark.parametrize("value", [1, 10, "1", "10"])
def test_parse_priority_bounds_accepted(value):
    assert parse_priority(value, None) == int(value)


@pytest.mark.parametrize("value", [0, 11, -1, "0", "11", True, False, "high", "5.5", 5.0, [5], {"p": 5}])
def test_parse_priority_garbage_is_bad_request(value):
    with pytest.raises(BadRequest) as exc:
        parse_priority(value, "5")
    assert exc.value.status == 400
    assert "priority must be an integer from 1 to 10" in exc.value.message


@pytest.mark.parametrize("header", ["0", "11", "abc", "1e1"])
def test_parse_priority_bad_header_is_bad_request(header):
    with pytest.raises(BadRequest):
        parse_priority(None, header)


# --- output_cap -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "cap"),
    [
        ({"options": {"num_predict": 64}}, 64),
        ({"options": {"num_predict": 0}}, 0),
        ({"options": {"num_predict": -1}}, None),
        ({"options": {"num_predict": True}}, None),
        ({"options": {"num_predict": "64"}}, None),
        ({"options": None}, None),
        ({"max_tokens": 64}, None),  # OpenAI field ignored for Ollama
        ({}, None),
    ],
)
def test_output_cap_ollama(body, cap):
    assert output_cap("ollama", body) == cap


@pytest.mark.parametrize(
    ("body", "cap"),
    [
        ({"max_tokens": 50}, 50),
        ({"max_completion_tokens": 30}, 30),
        ({"max_completion_tokens": 30, "max_tokens": 50}, 30),
        ({"max_tokens": -5}, None),
        ({"max_tokens": 2.5}, None),
        ({"max_tokens": False}, None),
        ({"options": {"num_predict": 64}}, None),  # Ollama field ignored for OpenAI
        ({}, None),
    ],
)
def test_output_cap_openai(body, cap):
    assert output_cap("openai", body) == cap


# --- complexity_of --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "tokens_in", "tokens_out", "level"),
    [
        ("generation", 599, 0, "low"),
        ("generation", 600, 0, "medium"),
        ("generation", 0, 149, "low"),  # 596
        ("generation", 0, 150, "medium"),  # 600
        ("generation", 3999, 0, "medium"),
        ("generation", 4000, 0, "high"),
        ("generation", 0, 1000, "high"),  # 4000
        ("analysis", 299, 0, "low"),  # 598
        ("analysis", 300, 0, "medium"),  # 600
        ("analysis", 1999, 0, "medium"),  # 3998
        ("analysis", 2000, 0, "high"),  # 4000
        ("embedding", 599, 0, "low"),
    ],
)
def test_complexity_thresholds(task, tokens_in, tokens_out, level):
    assert complexity_of(task, tokens_in, tokens_out) == level


# --- profile_request ------------------------------------------------------------------
def test_profile_request_ollama_chat_default_output():
    body = _chat("x" * 40, "y" * 39)  # "x"*40 + "\n" + "y"*39 = 80 chars -> 20 tokens
    p = profile_request("ollama", "chat", body, 7)
    assert p.as_dict() == {
        "task_type": "generation",
        "complexity": "low",  # 20 + 4 * 128 = 532
        "tokens_in": 20,
        "tokens_out_est": DEFAULT_OUTPUT_TOKENS,
        "output_capped": False,
        "requires_gpu": False,
        "model": "llama3.2",
        "priority": 7,
        # opened by its first user turn; the previous turn ("x" * 40) is 10 tokens
        "conversation": hashlib.blake2b(b"x" * 40, digest_size=8).hexdigest(),
        "prefix_tokens": 10,
        "num_ctx": None,
        "app": "",  # the Ingress names it
        "share": 1.0,
    }
    assert DEFAULT_OUTPUT_TOKENS == 128


def test_conversation_key_follows_the_opening_not_later_turns():
    system = {"role": "system", "content": "be brief"}
    turn1 = {"model": "m", "messages": [system, {"role": "user", "content": "first question"}]}
    turn2 = {"model": "m", "messages": turn1["messages"] + [{"role": "assistant", "content": "an answer"},
                                                           {"role": "user", "content": "and then?"}]}
    other = {"model": "m", "messages": [system, {"role": "user", "content": "another question"}]}
    key1, prefix1 = conversation_of("chat", turn1)
    key2, prefix2 = conversation_of("chat", turn2)
    assert key1 == key2 != conversation_of("chat", other)[0]
    assert prefix1 == 2  # "be brief": 8 chars
    assert prefix2 == 9  # "be brief\nfirst question\nan answer": 34 chars
    assert conversation_of("generate", {"prompt": "x"}) == (None, 0)
    assert conversation_of("chat", {"messages": []}) == (None, 0)


def test_num_ctx_only_from_ollama_options():
    assert profile_request("ollama", "chat", _chat("hi", options={"num_ctx": 4096}), 5).num_ctx == 4096
    assert profile_request("ollama", "chat", _chat("hi", options={"num_ctx": "big"}), 5).num_ctx is None
    assert profile_request("openai", "chat", _chat("hi", options={"num_ctx": 4096}), 5).num_ctx is None


def test_profile_request_uses_cap():
    p = profile_request("ollama", "chat", _chat("hi", options={"num_predict": 32}), 5)
    assert (p.tokens_in, p.tokens_out_est, p.output_capped, p.complexity) == (1, 32, True, "low")
    p = profile_request("openai", "chat", _chat("hi", max_tokens=2000), 5)
    assert (p.tokens_out_est, p.output_capped, p.complexity, p.requires_gpu) == (2000, True, "high", True)


def test_profile_request_learned_output_tokens_used_without_cap():
    learned = {("m:latest", "generation"): 300}  # keyed by (normalized model, task)
    p = profile_request("ollama", "generate", {"model": "m", "prompt": "abcd"}, 5, learned)
    assert (p.tokens_in, p.tokens_out_est, p.output_capped, p.complexity) == (1, 300, False, "medium")
    p = profile_request("ollama", "generate", {"model": "m", "prompt": "abcd", "options": {"num_predict": 10}}, 5,
                        learned)
    assert p.tokens_out_est == 10  # the cap wins over what was learned


def test_profile_request_learned_output_is_per_model_and_task():
    learned = {("m:latest", "generation"): 300, ("m:latest", "summarization"): 40, ("other:latest", "generation"): 7}
    p = profile_request("ollama", "generate", {"model": "m:latest", "prompt": "summarize this"}, 5, learned)
    assert (p.task_type, p.tokens_out_est) == ("summarization", 40)
    p = profile_request("ollama", "generate", {"model": "m", "prompt": "classify this text"}, 5, learned)
    assert (p.task_type, p.tokens_out_est) == ("classification", DEFAULT_OUTPUT_TOKENS)  # nothing learned
    p = profile_request("ollama", "generate", {"model": "unknown", "prompt": "hi"}, 5, learned)
    assert p.tokens_out_est == DEFAULT_OUTPUT_TOKENS
    p = profile_request("ollama", "generate", {"model": "m", "prompt": "hi"}, 5, None)
    assert p.tokens_out_est == DEFAULT_OUTPUT_TOKENS


def test_profile_request_embedding_has_no_output():
    body = {"model": "nomic-embed-text", "input": ["a" * 4000, "b" * 3999]}  # 8000 chars -> 2000 tokens
    p = profile_request("openai", "embed", body, 5, {("nomic-embed-text:latest", "embedding"): 500})
    assert p.task_type == "embedding"
    assert p.tokens_in == 2000
    assert p.tokens_out_est == 0
    assert p.complexity == "medium"
    assert p.requires_gpu is False


def test_profile_request_large_embedding_never_requires_gpu():
    p = profile_request("ollama", "embed", {"model": "e", "input": "z" * 40000}, 5)
    assert (p.tokens_in, p.complexity, p.requires_gpu) == (10000, "high", False)


def test_profile_request_analysis_doubles_work():
    # 1200 chars -> 300 tokens; cap 0 -> work 300, doubled for analysis -> 600 -> medium.
    text = "analyze " + "q" * 1192
    p = profile_request("openai", "chat", _chat(text, max_tokens=0), 5)
    assert (p.task_type, p.tokens_in, p.tokens_out_est, p.complexity) == ("analysis", 300, 0, "medium")
    p = profile_request("openai", "chat", _chat("write " + "q" * 1194, max_tokens=0), 5)
    assert (p.task_type, p.tokens_in, p.complexity) == ("generation", 300, "low")


def test_profile_request_generate_counts_system():
    p = profile_request("ollama", "generate", {"model": "m", "system": "s" * 7, "prompt": "p" * 8}, 5)
    assert p.tokens_in == 4  # "sssssss\npppppppp" = 16 chars
