"""The SDK's pure parts: priorities by role, error parsing from both API formats."""

from __future__ import annotations

import pytest

from sollol_serve.client import Priority, SollolError, _chunk, _error, priority_for_role


def test_roles_map_to_priorities():
    assert priority_for_role("realtime") == Priority.URGENT == 10
    assert priority_for_role("Batch") == Priority.BATCH
    assert priority_for_role("unknown") == Priority.NORMAL


def test_errors_in_either_format_become_sollol_errors():
    assert _error(404, '{"error": "model x not found"}').message == "model x not found"
    assert _error(429, '{"error": {"message": "slow down", "type": "rate_limit"}}').message == "slow down"
    assert _error(502, "Bad Gateway").message == "Bad Gateway"
    with pytest.raises(SollolError, match="broke"):
        _chunk('{"error": "stream broke", "done": true}')
