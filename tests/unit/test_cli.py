"""The command line's ordinary failures are one line on stderr and exit status 1 (a
traceback only with --debug), and batch-embed's output lines up with its input file."""

from __future__ import annotations

import httpx
import pytest

from sollol_serve.cli import error_line, line_records, main
from sollol_serve.client import SollolError
from sollol_serve.processes import free_port


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code, capsys.readouterr().err


def test_a_gateway_that_is_not_running_is_one_line(capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for argv in (["status", "--url", url], ["nodes", "--url", url], ["warm", "llama3.2", "--url", url]):
        code, err = run_cli(argv, capsys)
        assert code == 1 and err.count("\n") == 1, err
        assert err.startswith(f"sollol {argv[0]}: no answer from {url}") and "gateway running" in err


def test_a_missing_file_is_one_line(capsys, tmp_path):
    code, err = run_cli(["batch-embed", "m", str(tmp_path / "absent.txt")], capsys)
    assert code == 1 and err == f"sollol batch-embed: No such file or directory: {tmp_path / 'absent.txt'}\n"
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    code, err = run_cli(["batch-embed", "m", str(blank)], capsys)
    assert code == 1 and "no text to embed" in err and err.count("\n") == 1


def test_debug_shows_the_traceback():
    with pytest.raises(httpx.ConnectError):
        main(["--debug", "status", "--url", f"http://127.0.0.1:{free_port()}"])


def test_error_lines_say_what_the_gateway_said():
    assert error_line("warm", SollolError(404, "node 'gpu-1' not found")) == \
        "sollol warm: node 'gpu-1' not found (HTTP 404)"
    assert error_line("x", RuntimeError("two\nlines")) == "sollol x: RuntimeError: two lines"


def test_batch_embed_keeps_a_record_per_line_with_its_index():
    records = line_records(["alpha", "", "gamma", "   "], [[0.1], [0.3]])
    assert [(r["index"], r["line"], r["embedding"]) for r in records] == \
        [(0, 1, [0.1]), (1, 2, None), (2, 3, [0.3]), (3, 4, None)]
    assert records[1]["skipped"] == "blank line" and "skipped" not in records[0]
