"""A real multi-node Ray cluster on one machine, with a TEE daemon per node, and the gateway.

:class:`RayClusterStack`: a :class:`~sealserve.bench._runtime_stack.LocalStack` (KeyService,
owner, user, model store), a Ray cluster of separate raylets (``ray.cluster_utils.Cluster``: a
head and ``workers`` worker nodes, one CPU each, each labelled ``sealserve-node=NAME``), one
TEE platform daemon per node (``sealserve attest platform serve``, its own process and socket
``tee-NAME.sock``, sharing the platform key the KeyService trusts, as a fleet of one vendor's
machines does), the ``SealedInstance`` deployment whose replicas launch their runtimes through
*their* node's daemon (``RayOptions.tee_socket`` with ``{node}``), and the gateway
(:class:`~sealserve.platform.ray.RayPlatform` behind a :class:`~sealserve.gateway.GatewayServer`
in this process, the Ray driver).  A worker node can be removed (its raylet and everything on it
killed) while the load runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from sealserve._lifeline import tie_to_this_process
from sealserve._stopping import bounded, wait_gone
from sealserve.bench._runtime_stack import LocalStack
from sealserve.errors import SealserveError

__all__ = ["RayClusterStack"]

_DAEMON_READY_S: Final = 60.0


class RayClusterStack:
    """See the module docstring.  ``platform`` is a :class:`~sealserve.platform.PlatformConfig`."""

    def __init__(
        self,
        root: Path,
        *,
        platform: Any,
        workers: int = 2,
        min_replicas: int = 0,
        replica_cpus: float = 1.0,
        keep_alive_s: float | None = None,
    ) -> None:
        self.root = Path(root)
        self.platform_config = platform
        self.workers = workers
        self.min_replicas = min_replicas
        self.replica_cpus = replica_cpus
        self.keep_alive_s = keep_alive_s
        self.stack = LocalStack(self.root / "stack")
        self._sockets = Path(tempfile.mkdtemp(prefix="ssrn-"))
        self._ray_tmp = Path(tempfile.mkdtemp(prefix="ssray-"))
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}
        self.cluster: Any = None
        self.nodes: dict[str, Any] = {}
        self.options: Any = None
        self.platform: Any = None
        self.server: Any = None
        self.url = ""

    @property
    def node_names(self) -> list[str]:
        return ["head", *(f"w{i}" for i in range(1, self.workers + 1))]

    def socket_for(self, node: str) -> Path:
        return self._sockets / f"tee-{node}.sock"

    def open(self) -> RayClusterStack:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def _open(self) -> None:
        from ray.cluster_utils import Cluster

        from sealserve.gateway import Gateway, GatewayServer
        from sealserve.instance import ModelStore
        from sealserve.platform import ModelCatalog
        from sealserve.platform.ray import RayOptions, RayPlatform, connect, deploy
        from sealserve.platform.ray._replica import NODE_LABEL
        from sealserve.platform.ray._serve import AUTOSCALING_PUSH_ENV

        self.stack.open()
        for node in self.node_names:
            self._start_daemon(node)
        for name, value in AUTOSCALING_PUSH_ENV.items():  # the raylets pass it to their workers
            os.environ.setdefault(name, value)
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "labels": {NODE_LABEL: "head"},
                "temp_dir": str(self._ray_tmp),
                "include_dashboard": False,
                "object_store_memory": 96 << 20,
            },
        )
        self.nodes["head"] = self.cluster.head_node
        for node in self.node_names[1:]:
            self.nodes[node] = self.cluster.add_node(
                num_cpus=1, labels={NODE_LABEL: node}, object_store_memory=96 << 20
            )
        self.cluster.wait_for_nodes()
        connect(address=self.cluster.address)
        self.options = RayOptions(
            store_dir=self.stack.store.root,
            keyservice_url=self.stack.keyservice_url,
            tee_socket=self._sockets / "tee-{node}.sock",
            platform_key_file=self.stack.platform_key_file,
            keyservice_measurement=self.stack.keyservice_measurement,
            run_dir=self.root / "replicas",
            platform=self.platform_config,
            min_replicas=self.min_replicas,
            replica_num_cpus=self.replica_cpus,
            graceful_shutdown_timeout_s=10.0,
        )
        self.platform = RayPlatform(deploy(self.options), options=self.options)
        catalog = ModelCatalog(ModelStore(self.stack.store.root))
        self.server = GatewayServer(
            Gateway(self.platform, catalog), host="127.0.0.1", port=0, log_level="WARNING"
        )
        self.server.start()
        self.url = self.server.url

    def _start_daemon(self, node: str) -> None:
        sock = self.socket_for(node)
        log = self.root / f"tee-{node}.log"
        env = dict(os.environ)
        lifeline = tie_to_this_process(env)
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "sealserve", "attest", "platform", "serve",
                 "--socket", str(sock), "--data-dir", str(self.stack.root / "platform"),
                 "--log-level", "WARNING"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                pass_fds=(lifeline,), start_new_session=True,
            )  # fmt: skip
        self.daemons[node] = popen
        deadline = time.monotonic() + _DAEMON_READY_S
        while not sock.exists():
            if popen.poll() is not None or time.monotonic() > deadline:
                raise SealserveError(
                    f"the TEE daemon of node {node} did not start: "
                    f"{log.read_text(errors='replace')[-800:]}"
                )
            time.sleep(0.05)

    def remove_node(self, node: str) -> None:
        """Remove a worker node: its raylet and every worker on it die at once (its daemon
        stays: it ends the runtimes whose hosts went away)."""
        if node == "head":
            raise ValueError("the head node is not removed")
        self.cluster.remove_node(self.nodes.pop(node), allow_graceful=False)

    def instance_nodes(self) -> dict[int, str | None]:
        assert self.platform is not None
        nodes: dict[int, str | None] = self.platform.packer.nodes()
        return nodes

    def close(self) -> None:
        from sealserve.platform.ray import stop

        if self.server is not None:
            self.server.stop(timeout=30)
            self.server = None
        if self.cluster is not None:
            stop(self.options, started=False, timeout_s=45.0)
            bounded("ray.cluster_shutdown", self.cluster.shutdown, timeout_s=60.0)
            self.cluster = None
        for popen in self.daemons.values():
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        wait_gone([p.pid for p in self.daemons.values()], timeout_s=20)
        for popen in self.daemons.values():
            if popen.poll() is None:
                popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(10)
        self.daemons.clear()
        self.stack.close()
        shutil.rmtree(self._sockets, ignore_errors=True)
        shutil.rmtree(self._ray_tmp, ignore_errors=True)

    def __enter__(self) -> RayClusterStack:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
