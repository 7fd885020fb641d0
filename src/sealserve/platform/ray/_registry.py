"""One FnPacker router state per deployment and process.

Ray Serve builds a request router in every process that holds a handle to the deployment
(the gateway, a proxy), from the deployment's ``request_router_kwargs``.  The router and the
gateway's :class:`~sealserve.platform.ray.RayPlatform` in one process share one
:class:`~sealserve.platform.ray.ReplicaPacker`, so the decisions the router makes are the ones
the gateway reports.  Routers in other processes keep their own state (docs/platforms.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from sealserve.instance import open_store
from sealserve.packer import make_policy
from sealserve.platform import ModelCatalog, PlatformConfig
from sealserve.platform.ray._demand import DemandBoard
from sealserve.platform.ray._packer import ReplicaPacker

__all__ = ["board_for", "forget_packers", "packer_for"]

_lock = threading.Lock()
_packers: dict[tuple[str, str], ReplicaPacker] = {}
_boards: dict[tuple[str, str], DemandBoard] = {}


def _key(router_kwargs: Mapping[str, Any]) -> tuple[str, str]:
    try:
        return (str(router_kwargs["app_name"]), str(router_kwargs["deployment_name"]))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"router_kwargs are not RayOptions.router_kwargs(): {exc}") from exc


def board_for(router_kwargs: Mapping[str, Any]) -> DemandBoard:
    """The demand board of the deployment ``router_kwargs`` describe (made on first use)."""
    key = _key(router_kwargs)
    packer = packer_for(router_kwargs)
    with _lock:
        board = _boards.get(key)
        if board is None:
            board = _boards[key] = DemandBoard(
                *key, refresh=lambda: packer.expire(time.monotonic())
            )
        return board


def packer_for(router_kwargs: Mapping[str, Any]) -> ReplicaPacker:
    """The packer of the deployment ``router_kwargs`` describe (made on first use).

    ``router_kwargs`` is :meth:`RayOptions.router_kwargs`: the app and deployment names, the
    model store (the router packs by the stored models' sizes) and the platform config.
    """
    try:
        key = (str(router_kwargs["app_name"]), str(router_kwargs["deployment_name"]))
        store_dir = str(router_kwargs["store_dir"])
        platform = dict(router_kwargs["platform"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"router_kwargs are not RayOptions.router_kwargs(): {exc}") from exc
    with _lock:
        packer = _packers.get(key)
        if packer is None:
            config = PlatformConfig(**platform)
            catalog = ModelCatalog(open_store(store_dir), memory_factor=config.memory_factor)
            packer = ReplicaPacker(
                config, policy=make_policy(config.policy), model_memory_mb=catalog.memory_mb
            )
            _packers[key] = packer
        return packer


def forget_packers(app_name: str | None = None) -> None:
    """Drop the packers of ``app_name`` (every app when ``None``): the app was deleted; its
    demand boards stop publishing."""
    with _lock:
        for key in [k for k in _packers if app_name is None or k[0] == app_name]:
            del _packers[key]
        boards = [_boards.pop(k) for k in list(_boards) if app_name is None or k[0] == app_name]
    for board in boards:
        board.close()
