"""Command groups of the ``sealserve`` CLI, one module per group (see :mod:`sealserve.cli`)."""
