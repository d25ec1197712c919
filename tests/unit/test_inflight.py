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
