"""Links: how an end learns that its peer closed (BYE) or died (EOF, or a kill in-process)."""

from __future__ import annotations

import socket

from sealserve.ipc import InProcessLink, Link, PeerState, SocketLink


def test_in_process_links_see_close_and_kill() -> None:
    a, b = InProcessLink.pair()
    assert isinstance(a, Link)
    assert a.poll() is PeerState.ALIVE
    b.close()
    assert a.poll() is PeerState.CLOSED
    c, d = InProcessLink.pair()
    d.kill()
    assert c.poll() is PeerState.DIED
    assert d.poll() is PeerState.ALIVE


def test_a_socket_link_reads_bye_as_an_orderly_close() -> None:
    s1, s2 = socket.socketpair()
    mine, theirs = SocketLink(s1), SocketLink(s2)
    assert mine.poll() is PeerState.ALIVE
    theirs.close()
    assert mine.poll() is PeerState.CLOSED
    assert mine.poll() is PeerState.CLOSED  # sticky
    mine.close()


def test_a_socket_that_just_vanishes_reads_as_death() -> None:
    s1, s2 = socket.socketpair()
    mine, theirs = SocketLink(s1), SocketLink(s2)
    theirs.abort()
    assert mine.poll() is PeerState.DIED
    mine.close()
    assert "died" in repr(mine)
