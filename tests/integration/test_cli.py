"""The command line against the running gateway: refusals are one line and exit status 1,
and batch-embed's output records line up with the input file's lines."""

from __future__ import annotations

import json

import httpx
import pytest

from sollol_serve.cli import main

pytestmark = pytest.mark.integration


def test_the_readmes_warm_line_against_other_nodes_is_one_line(gateway, capsys):
    # The README's `sollol warm llama3.2 --nodes gpu-1,gpu-2`, on a cluster without those nodes.
    with pytest.raises(SystemExit) as exit_:
        main(["warm", "llama3.2", "--nodes", "gpu-1,gpu-2", "--url", gateway.url])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1 and err.startswith("sollol warm: ")
    assert "gpu-1" in err and "(HTTP 404)" in err
    with pytest.raises(SystemExit) as exit_:
        main(["batch-embed", "no-such-model", "-", "--url", gateway.url])  # stdin: pytest gives it empty
    assert exit_.value.code == 1 and capsys.readouterr().err.count("\n") == 1


def test_batch_embed_keeps_every_lines_index(gateway, capsys, tmp_path):
    source, out = tmp_path / "docs.txt", tmp_path / "vectors.jsonl"
    source.write_text("first document\n\nthird document\n   \nfifth document\n")
    main(["batch-embed", "nomic-embed-text", str(source), "--out", str(out), "--url", gateway.url])
    assert "2 blank line(s) not embedded" in capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4] and [r["line"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["embedding"] is None for r in records] == [False, True, False, True, False]
    direct = httpx.post(f"{gateway.url}/api/embed", json={"model": "nomic-embed-text", "input": "third document"})
    assert records[2]["embedding"] == direct.json()["embeddings"][0]  # line 3's own vector
