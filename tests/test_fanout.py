"""Fan-out (in process): the local fan-out hands each message, as is, to every peer of
the room but the one excluded."""

from __future__ import annotations

from crdtnb.fanout import LocalFanout


class Peer:
    """A client stand-in: keeps every message it is sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, message: bytes) -> None:
        self.sent.append(message)


def test_every_peer_but_the_excluded_one_gets_the_message() -> None:
    sender, first, second = Peer(), Peer(), Peer()
    LocalFanout().publish("nb.ipynb", b"update", [sender, first, second], exclude=sender)
    assert sender.sent == []
    assert first.sent == second.sent == [b"update"]


def test_without_exclusion_every_peer_gets_the_message() -> None:
    peers = [Peer() for _ in range(3)]
    LocalFanout().publish("nb.ipynb", b"repair", peers, exclude=None)
    assert [peer.sent for peer in peers] == [[b"repair"]] * 3


def test_a_peer_outside_the_list_is_never_sent_anything() -> None:
    member, outsider = Peer(), Peer()
    LocalFanout().publish("nb.ipynb", b"m", [member], exclude=outsider)
    assert member.sent == [b"m"] and outsider.sent == []


def test_the_same_bytes_object_goes_to_every_peer_in_order() -> None:
    """Encoded once for all: no copy per peer."""
    peers = [Peer(), Peer()]
    fanout = LocalFanout()
    first, second = b"one", b"two"
    for message in (first, second):
        fanout.publish("nb.ipynb", message, iter(peers), exclude=None)  # any iterable of peers
    for peer in peers:
        assert peer.sent == [first, second]
        assert peer.sent[0] is first and peer.sent[1] is second


def test_no_peers_is_fine() -> None:
    LocalFanout().publish("nb.ipynb", b"m", [], exclude=None)

