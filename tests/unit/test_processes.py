import socket

from sollol_serve.processes import free_port


def test_free_ports_avoid_rays_worker_range_and_the_ephemeral_range():
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    ports = [free_port() for _ in range(50)]
    assert all(20000 <= p < low for p in ports), ports
    assert len(set(ports)) == len(ports)  # never the same port twice


def test_a_free_port_can_be_bound():
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))
