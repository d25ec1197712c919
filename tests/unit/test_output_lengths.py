"""OutputLengths.fresh(): the learned answer lengths, asked of the state actor only when the
last answer has aged, and the last ones kept while the actor cannot answer (no Ray)."""

from __future__ import annotations

import asyncio

from ray.exceptions import RayActorError

from sollol_serve.analysis import output_lengths
from sollol_serve.analysis.output_lengths import OutputLengths
from sollol_serve.config import GatewayConfig


class FakeState:
    def __init__(self, answers: list):
        self.answers = answers
        self.asked = 0
        self.output_lengths = self

    def remote(self):
        self.asked += 1
        answer = self.answers.pop(0)

        async def reply():
            if isinstance(answer, Exception):
                raise answer
            return answer
        return reply()


def lengths_with(monkeypatch, state: FakeState, clock: list[float]) -> OutputLengths:
    monkeypatch.setattr(output_lengths, "state_actor", lambda config: state)
    monkeypatch.setattr(output_lengths.time, "monotonic", lambda: clock[0])
    return OutputLengths(GatewayConfig(), refresh_s=2.0, background=False)


def test_fresh_asks_once_per_refresh_interval_and_not_while_idle(monkeypatch):
    clock = [100.0]
    state = FakeState([{("llama3.2", "generation"): 90}, {("llama3.2", "generation"): 120}])
    lengths = lengths_with(monkeypatch, state, clock)
    assert state.asked == 0  # nothing asked until used
    first = asyncio.run(lengths.fresh())
    clock[0] += 1.9
    again = asyncio.run(lengths.fresh())
    assert first == again == {("llama3.2", "generation"): 90} and state.asked == 1
    clock[0] += 0.1
    assert asyncio.run(lengths.fresh()) == {("llama3.2", "generation"): 120} and state.asked == 2


def test_fresh_keeps_the_last_lengths_while_the_state_actor_cannot_answer(monkeypatch):
    clock = [100.0]
    state = FakeState([{("llama3.2", "generation"): 90}, RayActorError(), {("llama3.2", "generation"): 70}])
    lengths = lengths_with(monkeypatch, state, clock)
    asyncio.run(lengths.fresh())
    clock[0] += 5
    assert asyncio.run(lengths.fresh()) == {("llama3.2", "generation"): 90}  # the restart is not an error
    assert asyncio.run(lengths.fresh()) == {("llama3.2", "generation"): 70}  # asked again at the next use
    assert state.asked == 3
