"""sealserve on a real multi-node Ray cluster on this machine (the short form of ``sealserve
bench ray``): a head and two worker nodes, separate raylets of one CPU each, each node with
its own TEE platform daemon; replicas of one CPU (one per node), scaling from and to zero.

* from zero replicas, a burst for three models: the router's starts bring replicas up and
  FnPacker's requests run on instances of more than one node, every answer right;
* a worker node removed under a steady load: the requests it was serving are sent again and
  served elsewhere, none lost;
* idle past the keep-alive, the deployment scales to zero and the GB-seconds stop growing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealserve.bench._load import SteadyLoad, summarize
from sealserve.bench._ray_cluster import RayClusterStack
from sealserve.bench.ray import _jobs, _routing
from sealserve.platform import PlatformConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayClusterStack]:
    platform = PlatformConfig(
        policy="sesemi",
        max_instances=3,
        instance_concurrency=4,
        keep_alive_s=8.0,
        sizes_mb=(),
        start_timeout_s=30.0,
    )
    stack = RayClusterStack(tmp_path_factory.mktemp("raycluster"), platform=platform, workers=2)
    try:
        stack.open()
        yield stack
    finally:
        stack.close()


@pytest.mark.timeout(600)
def test_a_multi_node_cluster_routes_survives_a_node_loss_and_scales_to_zero(
    cluster: RayClusterStack,
) -> None:
    jobs, _, _ = _jobs(cluster, users=3)
    assert not cluster.platform.stats().instances  # from zero
    routing = _routing(cluster, jobs)
    assert routing["ok"] == routing["requests"]
    assert len(routing["nodes_used"]) >= 2, routing["requests_by_node"]

    load = SteadyLoad(cluster.url, jobs, concurrency=4, retry_window_s=60.0)
    load.start()
    try:
        deadline = time.monotonic() + 180
        while "w1" not in cluster.instance_nodes().values():  # w1 must hold an instance
            assert time.monotonic() < deadline, cluster.instance_nodes()
            time.sleep(0.5)
        began = time.monotonic()
        cluster.remove_node("w1")
        time.sleep(15.0)
    finally:
        load.stop()
    summary = summarize(load.records(), since=began, until=time.monotonic())
    assert summary["lost"] == 0, summary
    assert summary["failed"] == 0, summary
    assert summary["ok"] > 0, summary
    assert "w1" not in cluster.instance_nodes().values()

    deadline = time.monotonic() + 180
    while cluster.platform.stats().instances:
        if time.monotonic() > deadline:
            from ray import serve

            st = cluster.platform.stats()
            raise AssertionError(
                f"the deployment did not scale to zero: {st.instances} {st.counters} "
                f"waiting={st.waiting} in_flight={st.in_flight} "
                f"demand={cluster.platform.packer.starts_waiting} "
                f"{serve.status().applications}"
            )
        time.sleep(1.0)
    billed = cluster.platform.stats().gb_seconds
    time.sleep(3.0)
    assert cluster.platform.stats().gb_seconds == pytest.approx(billed)


def test_each_node_has_its_own_tee_daemon(cluster: RayClusterStack) -> None:
    assert set(cluster.daemons) == {"head", "w1", "w2"}
    sockets = {cluster.socket_for(n) for n in cluster.daemons}
    assert len(sockets) == 3
    assert all(Path(s).is_socket() for s in sockets)
