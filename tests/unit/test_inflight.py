from sollol_serve.nodes.inflight import InFlight


def test_running_counts_the_unfinished_requests_sent_before_and_itself():
    requests = InFlight()
    a, b, c = requests.begin(), requests.begin(), requests.begin()
    assert [requests.running_with(s) for s in (a, b, c)] == [1, 2, 3]
    requests.end(a)  # a ended: b's first byte after this proves only b and nothing before it
    assert [requests.running_with(s) for s in (b, c)] == [1, 2]
    requests.end(a)  # ending twice (the stream's close, then its finally) changes nothing
    assert requests.running_with(c) == 2
    d = requests.begin()  # sent later: never counted in an earlier request's proof
    assert requests.running_with(b) == 1 and requests.running_with(d) == 3


def test_ends_after_send_says_when_each_earlier_request_ended():
    now = [0.0]
    requests = InFlight(clock=lambda: now[0])
    a, b = requests.begin(), requests.begin()
    now[0] = 1.0
    c = requests.begin()  # sent beside a and b
    now[0] = 1.25
    requests.end(a)
    now[0] = 3.0
    assert requests.ends_after_send(c) == (0.25, None)  # a ended 0.25 s after c's send; b still runs
    requests.end(c)
    assert requests.ends_after_send(c) == ()  # ended: nothing more to say
    assert requests.ends_after_send(b) == (1.25,)  # a ended 1.25 s after b's send
