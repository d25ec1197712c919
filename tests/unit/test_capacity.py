"""Capacity learning (cluster.capacity and the core's probes) on simulated node histories.

`FifoNode` is a discrete-event stand-in for an Ollama node: `slots` requests run at once,
the rest wait in a FIFO queue; each request's first byte comes `prefill_s` after it starts
and it ends `service_s` after it starts. The node's own clock (queue time = start - arrival)
is what the router learns from, as from Ollama's durations. `drive` keeps `demand` requests
wanting to go, lets the RoutingCore decide every send, and records what it did.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace

import pytest

from sollol_serve.analysis.profile import RequestProfile
from sollol_serve.cluster.capacity import CEILING_TTL_S, Capacity, has_queued
from sollol_serve.cluster.learning import Observation, PerfBook
from sollol_serve.cluster.state import NodeView
from sollol_serve.config import RoutingConfig
from sollol_serve.routing.core import Flight, RoutingCore
from sollol_serve.routing.predict import Priors

M = "llama3.2:latest"


@dataclass
class FifoNode:
    slots: int
    prefill_s: float = 0.05
    service_s: float = 4.0
    running: int = 0
    queue: list[tuple[int, float]] = field(default_factory=list)  # (flight id, arrival)
    sent: list[int] = field(default_factory=list)  # unfinished flights in the order sent (the worker's count)
    most_queued: int = 0

    def arrive(self, fid: int, now: float, events: list) -> None:
        self.sent.append(fid)
        self.queue.append((fid, now))
        self.most_queued = max(self.most_queued, len(self.queue) - (self.slots - self.running))
        self.start(now, events)

    def start(self, now: float, events: list) -> None:
        while self.queue and self.running < self.slots:
            fid, arrived = self.queue.pop(0)
            self.running += 1
            heapq.heappush(events, (now + self.prefill_s, 0, fid, "first", now - arrived))
            heapq.heappush(events, (now + self.service_s, 1, fid, "end", now - arrived))

    def running_with(self, fid: int) -> int:
        """What the worker tells at `fid`'s first byte: unfinished requests sent up to it."""
        return self.sent.index(fid) + 1

    def end(self, fid: int) -> None:
        self.running -= 1
        self.sent.remove(fid)


@dataclass
class History:
    sent: int = 0  # requests sent to the node
    proven_at: int | None = None  # requests sent when `proven` first equalled the truth
    settled_at: int | None = None  # ... when, besides, the ceiling ended the probing
    learned_after_s: float | None = None  # time from the first send until `proven` equalled the truth
    most_above_proven: int = 0  # the most in flight above what was proven at the time
    queued_inside: int = 0  # requests that waited inside the node
    proven: list[int] = field(default_factory=list)


def profile() -> RequestProfile:
    return RequestProfile(task_type="generation", complexity="low", tokens_in=10, tokens_out_est=100,
                          output_capped=True, requires_gpu=False, model="llama3.2", priority=5)


def view(slots_known: bool = False, slots: int = 1, kind: str = "ollama") -> NodeView:
    return NodeView(name="a", url="http://a:1", kind=kind, healthy=True, models={M: M}, loaded=frozenset({M}),
                    slots=slots, slots_known=slots_known, in_flight_elsewhere=0)


def drive(node: FifoNode, requests: int, demand: int, core: RoutingCore | None = None,
          kind: str = "ollama") -> tuple[History, RoutingCore]:
    """Send `requests` in all, keeping up to `demand` of them wanting a slot at once."""
    core = core or RoutingCore(RoutingConfig(strategy="intelligent"))
    core.snapshot = {"a": view(kind=kind)}
    clock = [1000.0]
    core.wall = lambda: clock[0]
    events: list = []
    history = History()
    done = 0
    flights: dict[int, object] = {}
    while done < requests:
        now = clock[0]
        while history.sent < requests and len(core.flights["a"]) < demand:
            grant = core.admit_now(profile(), set(), 5, now)
            if grant is None:
                break
            history.sent += 1
            flights[grant.flight_id] = grant
            proven = core.book.learned_slots("a")
            history.most_above_proven = max(history.most_above_proven, len(core.flights["a"]) - proven)
            if proven == node.slots and history.proven_at is None:
                history.proven_at = history.sent - 1  # known before this one went
                history.learned_after_s = now - 1000.0
            node.arrive(grant.flight_id, now, events)
        when, _, fid, kind, queued = heapq.heappop(events)
        clock[0] = when
        if kind == "first":
            core.began(fid, "a", node.running_with(fid))
        else:
            running = node.running_with(fid)
            node.end(fid)
            flight = core.finish(fid, "a", when)
            history.queued_inside += queued > 0
            core.learn(Observation(node="a", model=M, task_type="generation", ok=True, prompt_tokens=10,
                                   completion_tokens=100, prefill_s=node.prefill_s,
                                   decode_s=node.service_s - node.prefill_s, wall_s=node.service_s + queued,
                                   concurrent=flight.concurrent, node_queued_s=queued, running=running,
                                   probe=flight.probe, at=when))
            done += 1
            node.start(when, events)
        capacity = core.book.capacity_of("a")
        history.proven.append(capacity.proven)
        if capacity.proven == node.slots and history.proven_at is None:
            history.proven_at = history.sent
        if capacity.proven == node.slots and history.learned_after_s is None:
            history.learned_after_s = clock[0] - 1000.0
        settled = capacity.proven == node.slots and not capacity.may_probe(clock[0])
        if settled and history.settled_at is None:
            history.settled_at = history.sent
    return history, core


@pytest.mark.parametrize(("slots", "settled_after"), [(1, 2), (2, 4), (4, 8)])
def test_a_node_that_queues_learned_from_a_burst_with_one_request_ever_waiting_inside(slots, settled_after):
    # Ollama's usual settings (OLLAMA_NUM_PARALLEL 1, else mostly 2 or 4), asked for twice what
    # they hold: explored one probe at a time.
    node = FifoNode(slots)
    history, core = drive(node, requests=3 * slots + 6, demand=2 * slots + 4)
    capacity = core.book.capacity_of("a")
    # Proven = true once the node has been sent as many requests as it has slots (a 1-slot
    # node: from the start; each probe is proved by its first byte while the earlier ones
    # still run, one prefill apart); settled (no more probes) when the one probe above the
    # truth ends, having queued: by then the first `slots` requests have ended (4 s each) and
    # as many more were sent at once, without probing.
    assert history.proven_at == (0 if slots == 1 else slots) and history.settled_at == settled_after
    assert history.learned_after_s == pytest.approx(0.05 * (slots - 1))  # a prefill a slot (1: at once)
    assert capacity.proven == slots and history.proven[-1] == slots
    # ... never more than one request above what was proven at the time ...
    assert history.most_above_proven == 1
    # ... and the one probe above the truth is the only request that ever queued in the node:
    # it set the ceiling, and nothing else was stacked there.
    assert node.most_queued == 1 and history.queued_inside == 1
    assert capacity.ceiling == slots + 1 and capacity.queues and not capacity.may_probe(1000.0 + 60)
    assert capacity.probes_queued == 1
    assert capacity.probes == capacity.probes_proved + capacity.probes_queued == slots


@pytest.mark.parametrize(("slots", "rounds"), [(64, 8), (128, 9)])
def test_a_wide_node_opens_up_by_doubling_and_nothing_waits_inside_it(slots, rounds):
    # As many requests as it has slots, all wanting to go at once. One probe at a time up to
    # 5 in flight (prefills at 0.05, 0.10, 0.15 s prove 2, 3, 4; the fourth, 0.20 s, proves 5);
    # then each round of first bytes doubles what is out: 10, 20, 40, 80 (64 wanted), so 64
    # are proven at 0.40 s and 128 at 0.45 s. One probe at a time would take 63 and 127 prefills.
    node = FifoNode(slots)
    history, core = drive(node, requests=slots, demand=slots)
    assert history.learned_after_s == pytest.approx(0.05 * rounds)
    assert history.proven_at == slots
    assert history.queued_inside == 0 and node.most_queued == 0
    capacity = core.book.capacity_of("a")
    assert capacity.proven == slots and not capacity.queues and capacity.probes_queued == 0


def test_a_wide_fifo_node_that_queues_is_stacked_once_then_explored_one_at_a_time():
    # 48 slots, asked for 100 at once: rounds prove 5, 10, 20, 40, and the round that doubles
    # 40 sends 40 more: 48 run, 32 wait inside the node (the price of opening up without
    # knowing the slots; a FIFO node of up to 4 slots never pays it). The first of them to
    # end having queued marks the node: no more than one probe at a time there after.
    node = FifoNode(48)
    history, core = drive(node, requests=300, demand=100)
    capacity = core.book.capacity_of("a")
    assert history.learned_after_s == pytest.approx(0.40)
    assert capacity.queues and capacity.proven == 48 and capacity.ceiling == 49
    assert history.most_above_proven == 40  # the one stack: the round above 40 ...
    # ... whose overflow is every request that ever waited inside the node, in one go: no
    # round went while it was unproved, and none after it (the ceiling is the truth + 1).
    assert node.most_queued == history.queued_inside == 32
    assert capacity.as_dict() | {"queues": True} == {"proven": 48, "ceiling": 49, "probes": 79,
                                                     "probes_proved": 47, "probes_queued": 32, "queues": True}


def test_an_openai_kind_node_that_does_not_report_its_slots_starts_wide():
    # vLLM or TGI (they batch continuously; no FIFO slots): doubling from the first probe.
    # 64 wanted at once: 2, 4, 8, 16, 32, 64 proven a prefill apart.
    node = FifoNode(64)
    history, _ = drive(node, requests=64, demand=64, kind="openai")
    assert history.learned_after_s == pytest.approx(0.05 * 6)
    assert history.queued_inside == 0


def test_one_slot_node_keeps_one_in_flight_after_its_probe_queued():
    node = FifoNode(1)
    history, core = drive(node, requests=12, demand=6)
    # The second request probed, waited inside the node, and set the ceiling: from then on
    # the router held the rest itself, one at a time (the old "+1" kept two there forever).
    assert history.queued_inside == 1
    assert core.book.capacity_of("a").as_dict() == {"proven": 1, "ceiling": 2, "probes": 1, "probes_proved": 0,
                                                    "probes_queued": 1, "queues": True}


def test_wide_node_gets_a_burst_without_waiting_for_completions():
    # 32 requests at once to a 128-slot node: all sent within 6 first bytes (prefill 0.05 s
    # each: 2, 3, 4, 5 in flight one probe at a time, then 10, 20, 32), long before the first
    # one ends at 4 s.
    node = FifoNode(128, prefill_s=0.05, service_s=4.0)
    core = RoutingCore(RoutingConfig(strategy="intelligent"))
    core.snapshot = {"a": view()}
    clock = [0.0]
    core.wall = lambda: clock[0]
    events: list = []
    sent_at = []
    while len(sent_at) < 32:
        grant = core.admit_now(profile(), set(), 5, clock[0])
        if grant is not None:
            sent_at.append(clock[0])
            node.arrive(grant.flight_id, clock[0], events)
            continue
        when, _, fid, kind, _ = heapq.heappop(events)
        assert kind == "first"  # nothing ended before all 32 were sent
        clock[0] = when
        core.began(fid, "a", node.running_with(fid))
    assert sent_at[-1] == pytest.approx(6 * 0.05)
    assert sorted(set(sent_at)) == pytest.approx([0.0, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30])
    assert core.book.learned_slots("a") == 20  # the last 12 are probes still open


def test_configured_slots_are_never_probed_past():
    core = RoutingCore(RoutingConfig(strategy="intelligent"))
    core.snapshot = {"a": view(slots_known=True, slots=2)}
    assert core.admit_now(profile(), set(), 5, 0.0) is not None
    assert core.admit_now(profile(), set(), 5, 0.0) is not None
    assert core.admit_now(profile(), set(), 5, 0.0) is None  # full: it waits, no probe


def test_ceiling_expires_and_the_node_is_explored_again():
    capacity = Capacity(proven=2)
    capacity.queued(3, at=100.0)
    assert (capacity.proven, capacity.ceiling) == (2, 3)
    assert not capacity.may_probe(100.0 + CEILING_TTL_S - 1)
    assert capacity.may_probe(100.0 + CEILING_TTL_S + 1)
    capacity.ran(3)  # the node had grown: the old ceiling goes
    assert (capacity.proven, capacity.ceiling) == (3, None)


def test_queueing_below_proven_lowers_it():
    # Queued with 3 in flight although 4 were proven: the node now has at most 2 free for us.
    # No ceiling from that: it contradicts what was proven (a shared cold load looks the
    # same), so probing goes on and finds out.
    capacity = Capacity(proven=4)
    capacity.queued(3, at=5.0)
    assert (capacity.proven, capacity.ceiling) == (2, None) and capacity.may_probe(6.0)
    capacity.queued(1, at=6.0)
    assert (capacity.proven, capacity.ceiling) == (1, None)
    capacity.queued(2, at=7.0)  # a probe above the proven 1 queued: that is a ceiling
    assert (capacity.proven, capacity.ceiling) == (1, 2) and not capacity.may_probe(8.0)


def test_has_queued_threshold():
    # By the node's clock: 50 ms, or 5 % of the work.
    assert not has_queued(0.05, 0.2) and has_queued(0.06, 0.2)
    assert not has_queued(0.2, 4.0) and has_queued(0.21, 4.0)
    # By the gateway's wall clock (hops included): 0.1 s, or a quarter of the work.
    assert not has_queued(0.1, 0.2, node_clock=False) and has_queued(0.11, 0.2, node_clock=False)
    assert not has_queued(1.0, 4.0, node_clock=False) and has_queued(1.01, 4.0, node_clock=False)


def test_first_byte_after_a_sibling_finished_proves_nothing():
    core = RoutingCore(RoutingConfig(strategy="intelligent"))
    core.snapshot = {"a": view()}
    core.wall = lambda: 0.0
    first = core.admit_now(profile(), set(), 5, 0.0)
    probe = core.admit_now(profile(), set(), 5, 0.0)
    assert probe.probe and core.admit_now(profile(), set(), 5, 0.0) is None  # one probe at a time
    core.finish(first.flight_id, "a", 1.0)  # the first ended before the probe's first byte
    core.began(probe.flight_id, "a", 1)
    assert core.book.learned_slots("a") == 1
    assert core.pending == []


def test_first_byte_the_worker_saw_alone_proves_nothing_though_the_router_has_not_heard_the_end():
    # The first ended on the node, and the probe started there after it; the first's outcome
    # is still on its way (batched) when the probe's first byte arrives. The router's own
    # flights say two ran at once; the worker counted one.
    core = RoutingCore(RoutingConfig(strategy="intelligent"))
    core.snapshot = {"a": view()}
    core.wall = lambda: 0.0
    core.admit_now(profile(), set(), 5, 0.0)
    probe = core.admit_now(profile(), set(), 5, 0.0)
    core.began(probe.flight_id, "a", 1)
    assert core.book.learned_slots("a") == 1
    core.began(probe.flight_id, "a", 2)  # a first byte counts once
    assert core.book.learned_slots("a") == 1


def test_a_request_that_did_not_queue_proves_only_what_its_worker_saw_running():
    # Sent as a probe with two in flight by the router's count, it found the node free (the
    # other had just ended): no queue time, and yet no second slot.
    book = PerfBook()
    done = Observation(node="a", model=M, task_type="generation", ok=True, prompt_tokens=10, completion_tokens=10,
                       prefill_s=0.1, decode_s=1.0, wall_s=1.1, concurrent=2, node_queued_s=0.0, probe=True)
    book.observe(replace(done, running=1))
    assert book.learned_slots("a") == 1
    book.observe(replace(done, running=2))
    assert book.learned_slots("a") == 2
    assert book.capacity_of("a").probes_proved == 1


def test_probe_on_a_fast_node_beats_a_free_slow_one_but_not_a_free_fast_one():
    def obs(node: str, decode_tps: float) -> Observation:
        return Observation(node=node, model=M, task_type="generation", ok=True, prompt_tokens=100,
                           completion_tokens=100, prefill_s=0.01, decode_s=100 / decode_tps,
                           wall_s=0.01 + 100 / decode_tps)

    core = RoutingCore(RoutingConfig(strategy="intelligent"))
    fast, slow = view(), view()
    fast.name, slow.name = "fast", "slow"
    core.snapshot = {"fast": fast, "slow": slow}
    core.book.merge_from([obs("fast", 100.0), obs("slow", 10.0)])
    first = core.admit_now(profile(), set(), 5, 0.0)
    assert (first.choice.node.name, first.probe) == ("fast", False)
    # fast is full by its proven 1 slot; slow is free but 10x slower: a probe on fast is
    # predicted at 1.01 s against 10.01 s on slow.
    second = core.admit_now(profile(), set(), 5, 0.0)
    assert (second.choice.node.name, second.probe) == ("fast", True)
    # The probe is out, so no second one; waiting ~1 s for fast beats 10 s on slow: it waits.
    assert core.admit_now(profile(), set(), 5, 0.0) is None


def test_no_probe_where_a_miss_would_wait_long():
    # "wide" (unknown slots, proven 1) is busy with a long answer (20 s left); "known" has one
    # configured slot, free in 3 s. Both decode 100 tok/s: this request is 1 s of work.
    # A probe on wide: even odds of 1 s (a slot) or 21 s (it queues): 11 s expected, worse
    # than 3 + 1 = 4 s on known. Were the probe's slot believed in, it would go (1 s < 4 s).
    def obs(node: str) -> Observation:
        return Observation(node=node, model=M, task_type="generation", ok=True, prompt_tokens=1000,
                           completion_tokens=100, prefill_s=0.0001, decode_s=1.0, wall_s=1.0)

    core = RoutingCore(RoutingConfig(strategy="intelligent"))
    wide, known = view(), view(slots_known=True, slots=1)
    wide.name, known.name = "wide", "known"
    core.snapshot = {"wide": wide, "known": known}
    core.book.merge_from([obs("wide"), obs("known")])
    core.flights["wide"][1] = Flight("wide", M, started=0.0, predicted_end=20.0, concurrent=1)
    core.flights["known"][2] = Flight("known", M, started=0.0, predicted_end=3.0, concurrent=1)
    ranked = core.rank(profile(), set(), now=0.0)
    assert [s.node.name for s in ranked] == ["known", "wide"]
    assert ranked[0].score == pytest.approx(4.0, abs=0.01)
    expected = core.probe_prediction(ranked[1], profile(), Priors.from_book(core.book, M), now=0.0)
    assert expected.total_s == pytest.approx(0.5 * 1.0 + 0.5 * 21.0, abs=0.01)
    assert core.pick(ranked, profile(), 5, 0.0) is None  # it waits for known


def test_a_request_that_did_not_queue_proves_what_ran_beside_it_after_it_was_sent():
    # A long prefill: the answer it was sent beside ended 2 s after the send, before its first
    # byte (one running then), but it did not queue, so it started beside that answer.
    book = PerfBook()
    done = Observation(node="a", model=M, task_type="generation", ok=True, prompt_tokens=600, completion_tokens=10,
                       prefill_s=3.0, decode_s=0.5, wall_s=3.5, concurrent=2, node_queued_s=0.0, probe=True,
                       running=1, ends_after_send=(2.0,))
    book.observe(done)
    assert book.learned_slots("a") == 2 and book.capacity_of("a").probes_proved == 1
    # Ended 0.2 s after the send: within what it may have waited unseen (0.175 s = 5% of its
    # 3.5 s of work) plus 0.1 s of slack, so maybe not beside it: no proof.
    book = PerfBook()
    book.observe(replace(done, ends_after_send=(0.2,)))
    assert book.learned_slots("a") == 1
    book.observe(replace(done, ends_after_send=(0.3, None)))  # one just past that, one still running
    assert book.learned_slots("a") == 2  # min with the router's count of 2
    # Had it waited inside the node, nothing it was sent beside proves anything.
    book = PerfBook()
    book.observe(replace(done, node_queued_s=2.0, wall_s=5.5))
    assert book.learned_slots("a") == 1 and book.capacity_of("a").ceiling == 2
