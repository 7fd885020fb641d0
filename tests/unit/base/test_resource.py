"""One lifecycle for every resource: UNOPENED -> OPENED -> CLOSED, and misuse is a RuntimeError."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

import sealserve
from sealserve import ResourceState, ResourceStateError
from sealserve._resource import AsyncResource, Resource
from sealserve.attest.tee import PlatformClient, PlatformServer, SimulatedPlatform
from sealserve.client import GatewayClient, KeyServiceClient, Owner, User
from sealserve.ecall import Endpoint
from sealserve.errors import SealserveError
from sealserve.instance import InstanceClient, RuntimeSupervisor
from sealserve.keyservice import Store
from sealserve.platform import Platform


class Thing(Resource):
    resource_name = "the thing"

    def __init__(self, *, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.events: list[str] = []

    def _open(self) -> None:
        self.events.append("open")
        if self.fail:
            raise OSError("cannot")

    def _close(self) -> None:
        self.events.append("close")

    def use(self) -> str:
        self._check_opened()
        return "used"


def test_the_states_and_their_order() -> None:
    thing = Thing()
    assert thing.state is ResourceState.UNOPENED
    with pytest.raises(ResourceStateError, match="the thing is unopened; open it first"):
        thing.use()
    assert thing.open() is thing
    assert thing.state is ResourceState.OPENED
    assert thing.use() == "used"
    with pytest.raises(ResourceStateError, match="the thing is opened; open it only once"):
        thing.open()
    thing.close()
    thing.close()  # idempotent: _close runs once
    assert thing.state is ResourceState.CLOSED
    assert thing.events == ["open", "close"]
    with pytest.raises(ResourceStateError, match="the thing is closed"):
        thing.use()
    with pytest.raises(ResourceStateError, match="open it only once"):
        thing.open()
    with pytest.raises(ResourceStateError, match="closed"), thing:
        pass


def test_misuse_is_a_programming_error_not_a_domain_error() -> None:
    assert issubclass(ResourceStateError, RuntimeError)
    assert not issubclass(ResourceStateError, SealserveError)
    assert not hasattr(ResourceStateError("x"), "retryable")


def test_with_opens_an_unopened_resource_and_enters_an_opened_one() -> None:
    with Thing() as thing:
        assert thing.state is ResourceState.OPENED
    assert thing.state is ResourceState.CLOSED
    opened = Thing().open()
    with opened as same:
        assert same is opened
    assert opened.events == ["open", "close"]


def test_a_failed_open_closes_and_propagates() -> None:
    thing = Thing(fail=True)
    with pytest.raises(OSError, match="cannot"):
        thing.open()
    assert thing.state is ResourceState.CLOSED
    assert thing.events == ["open", "close"]  # _close released what _open had taken


def test_closing_an_unopened_resource_closes_it_for_good() -> None:
    thing = Thing()
    thing.close()
    assert thing.state is ResourceState.CLOSED
    assert thing.events == ["close"]
    with pytest.raises(ResourceStateError, match="closed; open it only once"):
        thing.open()


def test_the_async_resource_has_the_same_lifecycle() -> None:
    class AsyncThing(AsyncResource):
        resource_name = "the async thing"

        def __init__(self) -> None:
            super().__init__()
            self.events: list[str] = []

        async def _open(self) -> None:
            self.events.append("open")

        async def _close(self) -> None:
            self.events.append("close")

    async def main() -> None:
        thing = AsyncThing()
        async with thing:
            assert thing.state is ResourceState.OPENED
            with pytest.raises(ResourceStateError, match="open it only once"):
                await thing.open()
        await thing.close()
        assert thing.events == ["open", "close"]
        with pytest.raises(ResourceStateError, match="the async thing is closed"):
            thing._check_opened()

    asyncio.run(main())


@pytest.mark.parametrize(
    "cls",
    [
        Endpoint,  # ecall/_rpc.py
        Platform,  # platform/_platform.py
        Store,  # keyservice/_store.py
        InstanceClient,  # instance/_client.py
        RuntimeSupervisor,  # instance/_supervisor.py
        PlatformClient,  # attest/_client.py
        SimulatedPlatform,  # attest/_platform.py
        PlatformServer,  # attest/_daemon.py
        KeyServiceClient,  # client/_keyservice.py
        GatewayClient,  # client/_gateway.py
        Owner,
        User,
    ],
)
def test_every_resource_uses_the_one_lifecycle(cls: type) -> None:
    assert issubclass(cls, Resource | AsyncResource)
    for name in ("open", "close", "state", "__enter__", "__aenter__"):
        defined = [k for k in cls.__mro__ if name in vars(k)]
        if defined:  # written once, in the base
            assert defined[0] in (Resource, AsyncResource, sealserve._resource._Lifecycle), name


def test_no_module_declares_its_own_unopened_opened_closed_enum() -> None:
    root = Path(sealserve.__file__).parent
    found = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                names = {
                    t.id
                    for stmt in node.body
                    if isinstance(stmt, ast.Assign)
                    for t in stmt.targets
                    if isinstance(t, ast.Name)
                }
                if {"UNOPENED", "CLOSED"} <= names:
                    found.append(f"{path.relative_to(root)}:{node.name}")
    assert found == ["_resource.py:ResourceState"]
