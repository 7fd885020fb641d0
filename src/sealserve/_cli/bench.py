"""``sealserve bench …``: characterization and end-to-end benchmarks.

Each benchmark module in :mod:`sealserve.bench` exposes ``register(app)``, which adds its
command to this group.
"""

from __future__ import annotations

import typer

from sealserve.bench import (
    crypto,
    faults,
    imports,
    ipc,
    keyservice,
    packer,
    ray,
    runtime,
    serve,
    soak,
    suite,
    tensors,
    upload,
)

__all__ = ["app"]

app = typer.Typer(
    help="Benchmarks: each measures its baseline in the same run and prints ratios to it.",
    no_args_is_help=True,
)

# One line per benchmark module, in the order of the layers.
crypto.register(app)
tensors.register(app)
ipc.register(app)
keyservice.register(app)
runtime.register(app)
serve.register(app)
upload.register(app)
packer.register(app)
imports.register(app)
faults.register(app)
ray.register(app)
soak.register(app)
suite.register(app)
