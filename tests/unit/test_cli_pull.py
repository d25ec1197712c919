"""`sollol pull`'s progress lines, from Ollama's progress events (the command against a gateway
is in tests/integration/test_model_admin.py)."""

from __future__ import annotations

import pytest

from sollol_serve.cli import PullProgress, main
from sollol_serve.processes import free_port


def test_a_line_when_a_node_moves_on_not_for_every_event():
    progress = PullProgress()
    layer = {"status": "pulling 8eeb52dfb3bb", "digest": "sha256:8eeb", "total": 2_000_000_000}
    lines = [progress.line(e) for e in (
        {"status": "pulling manifest", "node": "o1"},
        {**layer, "completed": 0, "node": "o1"},
        {**layer, "completed": 10, "node": "o1"},  # still 0 %: nothing new to say
        {**layer, "completed": 1_000_000_000, "node": "o1"},
        {"status": "pulling manifest", "node": "o2"},
        {"status": "success", "node": "o1"},
    )]
    assert lines == ["o1: pulling manifest", "o1: pulling 8eeb52dfb3bb   0% of 2.00 GB", None,
                     "o1: pulling 8eeb52dfb3bb  50% of 2.00 GB", "o2: pulling manifest", "o1: success"]


def test_the_summary_says_where_the_model_is_and_what_was_skipped():
    line = PullProgress().line({"status": "success", "model": "qwen3", "nodes": ["o1", "o2"], "skipped": ["cpp"]})
    assert line == "pulled qwen3 on 2 node(s): o1, o2 (skipped: cpp)"


def test_a_skipped_or_failed_node_is_its_own_line():
    progress = PullProgress()
    assert progress.line({"status": "skipped: llama-server node", "node": "cpp"}) == "cpp: skipped: llama-server node"
    assert progress.line({"status": "failed: cannot reach node o3", "node": "o3"}) == "o3: failed: cannot reach node o3"


def test_a_gateway_that_does_not_answer_is_one_line_on_stderr(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["pull", "qwen3", "--url", f"http://127.0.0.1:{free_port()}"])
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sollol pull: no answer from http://127.0.0.1:")
