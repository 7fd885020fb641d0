from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from sealserve.attest import ENTRIES, measure
from sealserve.attest._measure import (
    CodeSnapshot,
    measure_manifest,
    package_sources,
    source_manifest,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "measurement_v1.json").read_text())


def _write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "sealserve"


def test_manifest_is_sha256sum_lines_in_path_order(tmp_path: Path) -> None:
    package = _write_tree(tmp_path, VECTORS["files"])
    manifest = source_manifest(package_sources(package))
    assert manifest.decode() == VECTORS["manifest"]
    first = manifest.decode().splitlines()[0]
    digest, path = first.split("  ")
    assert digest == hashlib.sha256(VECTORS["files"][path].encode()).hexdigest()


@pytest.mark.parametrize("case", VECTORS["measurements"], ids=lambda c: c["entry"])
def test_known_answer_measurements(tmp_path: Path, case: dict[str, object]) -> None:
    package = _write_tree(tmp_path, VECTORS["files"])
    manifest = source_manifest(package_sources(package))
    config = case["config"]
    assert isinstance(config, dict)
    assert (
        measure_manifest(manifest, entry=str(case["entry"]), config=config) == case["measurement"]
    )


def test_same_code_same_measurement_wherever_and_whenever(tmp_path: Path) -> None:
    a = _write_tree(tmp_path / "a", VECTORS["files"])
    b = _write_tree(tmp_path / "elsewhere" / "b", dict(reversed(VECTORS["files"].items())))
    os.utime(b / "__init__.py", (0, 0))
    (b / "__pycache__").mkdir()
    (b / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\x00junk")
    (b / "py.typed").write_text("")
    (b / ".hidden").mkdir()
    (b / ".hidden" / "ignored.py").write_text("x = 1\n")
    assert source_manifest(package_sources(a)) == source_manifest(package_sources(b))


def test_any_change_of_code_entry_or_config_changes_the_measurement(tmp_path: Path) -> None:
    package = _write_tree(tmp_path, VECTORS["files"])
    base = source_manifest(package_sources(package))
    reference = measure_manifest(base, entry="runtime", config={})
    (package / "z_last.py").write_text("# sorted last!\n")
    changed = source_manifest(package_sources(package))
    (package / "new.py").write_text("")
    added = source_manifest(package_sources(package))
    values = {
        reference,
        measure_manifest(changed, entry="runtime", config={}),
        measure_manifest(added, entry="runtime", config={}),
        measure_manifest(base, entry="keyservice", config={}),
        measure_manifest(base, entry="runtime", config={"k": "v"}),
        measure_manifest(base, entry="runtime", config={"k": ""}),
    }
    assert len(values) == 6


def test_symlinks_are_refused(tmp_path: Path) -> None:
    package = _write_tree(tmp_path, VECTORS["files"])
    (package / "link.py").symlink_to(package / "z_last.py")
    with pytest.raises(ValueError, match="symlink"):
        package_sources(package)


def test_unknown_entry_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"attest-probe, keyservice, runtime; got 'shell'"):
        measure_manifest(b"", entry="shell", config={})
    with pytest.raises(TypeError, match="config"):
        measure_manifest(b"", entry="runtime", config={"n": 1})  # type: ignore[dict-item]


def test_registry_names_modules_without_importing_them() -> None:
    assert ENTRIES["runtime"] == "sealserve.runtime._main"
    assert ENTRIES["keyservice"] == "sealserve.keyservice._main"
    assert ENTRIES["attest-probe"] == "sealserve.attest._probe"


def test_snapshot_copies_exactly_what_it_measures(tmp_path: Path, frozen_package: Path) -> None:
    snapshot = CodeSnapshot.create(frozen_package, parent=tmp_path / "tee")
    try:
        copied = source_manifest(package_sources(snapshot.root / "sealserve"))
        assert copied == snapshot.manifest
        assert snapshot.measurement("runtime") == measure("runtime")
        assert snapshot.file_count == len(snapshot.manifest.splitlines())
        probe = snapshot.root / "sealserve" / "attest" / "_probe.py"
        assert stat.S_IMODE(probe.stat().st_mode) == 0o400
        assert stat.S_IMODE(snapshot.root.stat().st_mode) == 0o500
        # Editing the source afterwards changes neither the copy nor its measurement.
        before = snapshot.measurement("attest-probe")
        (frozen_package / "attest" / "_probe.py").write_text("raise SystemExit(3)\n")
        assert snapshot.measurement("attest-probe") == before
        assert measure("attest-probe") != before
        assert b"raise SystemExit(3)" not in probe.read_bytes()
    finally:
        snapshot.remove()
    assert not snapshot.root.exists()
    snapshot.remove()  # idempotent


def test_snapshot_refuses_a_directory_that_is_not_the_package(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("")
    with pytest.raises(ValueError, match="not the sealserve package"):
        CodeSnapshot.create(tmp_path / "pkg", parent=tmp_path / "tee")
