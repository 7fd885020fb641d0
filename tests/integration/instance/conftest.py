"""A real local stack: platform daemon, KeyService, owner, user, model store, instance hosts.

The stack is :class:`sealserve.bench._runtime_stack.LocalStack` (what the benchmark uses):
every process is real and every pin comes from the platform's own code snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sealserve.bench._runtime_stack import LocalStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("stack"), log_level="INFO") as s:
        yield s


@pytest.fixture(scope="session")
def mobilenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sealserve.models import build

    return build("mobilenet-v2", tmp_path_factory.mktemp("zoo"))
