"""The shared-memory data plane: channels with loans, notifiers, copy engines, a scheduler.

It moves bytes between an untrusted host and the sealed runtime (and between any two
processes of one machine) through shared memory, copying as little as the machine allows.
It knows nothing of ML or keys; sealserve only ever puts ciphertext in it.

Everyday use::

    from sealserve import ipc

    # host side, with one end of a socketpair; the runtime calls Connection.open(its_end)
    with ipc.Connection.create(sock, request=ipc.ChannelOptions(arena_bytes=512 << 20)) as conn:
        with conn.publisher.loan(len(blob)) as loan:  # write in place, no copy
            loan.view[:] = blob
        sample = conn.subscriber.receive(timeout=5.0)  # a Sample, or None on timeout
        if sample is not None:
            with sample:  # read in place; released at the end of the block
                reply = bytes(sample.view)

See ``docs/ipc.md`` for the segment layout, the protocol and the scheduler's cost model.
"""

from sealserve.ipc._channel import Channel, ChannelOptions, ChannelState
from sealserve.ipc._connection import (
    Connection,
    ConnectionState,
    Listener,
    connect,
    share_channel,
)
from sealserve.ipc._engines import CopyEngine, CopyJob, InlineEngine, ThreadEngine
from sealserve.ipc._layout import MAX_SUBSCRIBERS, VERSION
from sealserve.ipc._link import InProcessLink, Link, PeerState, SocketLink
from sealserve.ipc._metrics import IPCMetrics
from sealserve.ipc._notify import QoS, SpinBudget
from sealserve.ipc._publisher import Completion, Loan, Publisher
from sealserve.ipc._scheduler import (
    Decision,
    EngineModel,
    Notify,
    NotifyReason,
    Path,
    Reason,
    Scheduler,
)
from sealserve.ipc._segment import Segment, SegmentState
from sealserve.ipc._stats import ChannelReport, ChannelStats
from sealserve.ipc._subscriber import Sample, Subscriber

__all__ = [
    "Channel",
    "ChannelOptions",
    "ChannelReport",
    "ChannelState",
    "ChannelStats",
    "Completion",
    "Connection",
    "ConnectionState",
    "CopyEngine",
    "CopyJob",
    "Decision",
    "EngineModel",
    "IPCMetrics",
    "InProcessLink",
    "InlineEngine",
    "Link",
    "Listener",
    "Loan",
    "MAX_SUBSCRIBERS",
    "Notify",
    "NotifyReason",
    "Path",
    "PeerState",
    "Publisher",
    "QoS",
    "Reason",
    "Sample",
    "Scheduler",
    "Segment",
    "SegmentState",
    "SocketLink",
    "SpinBudget",
    "Subscriber",
    "ThreadEngine",
    "VERSION",
    "connect",
    "share_channel",
]
