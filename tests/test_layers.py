"""The import layers of .importlinter hold (lint-imports, as CI runs it), every module of the project
sits in a layer, and a planted violation breaks the contracts (so the check can fail)."""

from __future__ import annotations

import configparser
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

CONFIG = REPO / ".importlinter"
LIBRARY_CONTRACT = "importlinter:contract:library-below-applications"
FORMAT_CONTRACT = "importlinter:contract:format-is-the-bottom"


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).parent / "lint-imports"
    return subprocess.run([str(lint), "--config", str(root / ".importlinter"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(root), "PATH": ""})


def _modules(section: str, key: str) -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    return set(parser[section][key].split())


def test_the_import_contracts_hold():
    proc = _lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_every_module_is_a_library_or_an_application():
    """A new module of deteclap must be put in a layer of .importlinter (library or application)."""
    library = _modules(LIBRARY_CONTRACT, "source_modules")
    applications = _modules(LIBRARY_CONTRACT, "forbidden_modules")
    assert not library & applications
    modules = {f"deteclap.{m.name}" for m in pkgutil.iter_modules([str(REPO / "deteclap")])}
    assert modules | {"dali_pipes", "benchmarks"} == library | applications
    assert _modules(FORMAT_CONTRACT, "forbidden_modules") == (library | applications) - {"deteclap.format"}


def test_a_planted_violation_breaks_both_contracts(tmp_path):
    """A function-level import of an application in deteclap.format and one in deteclap.data: both
    contracts are reported broken, naming the importing module."""
    for name in ("deteclap", "dali_pipes", "benchmarks", ".importlinter"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / name)
    with open(tmp_path / "deteclap" / "format" / "spec.py", "a") as f:
        f.write("\n\ndef _planted():\n    from deteclap.shard import write_shards\n\n    return write_shards\n")
    with open(tmp_path / "deteclap" / "data" / "common.py", "a") as f:
        f.write("\n\ndef _planted():\n    import deteclap.train\n\n    return deteclap.train\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode != 0
    assert "0 kept, 2 broken" in proc.stdout, proc.stdout[-3000:]
    assert "deteclap.format.spec -> deteclap.shard" in proc.stdout
    assert "deteclap.data.common -> deteclap.train" in proc.stdout
