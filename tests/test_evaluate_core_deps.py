"""The core install declares what the core imports (issue 23 #14: pydantic was imported by
`pollux.engine.registry` but not declared, and worked only because a newer typer pulled it in).

A fresh interpreter imports the core's entry points — every verb's module, evaluate, meta-eval,
report, the engine registry and the `openai:` engine — while an import hook records each
third-party package that *pollux's own code* imports (not what those packages import in turn).
Each must be a declared core dependency in pyproject.toml. CI's `.ci/core-only` step checks the
same from the other side: a real `pip install .` running the verbs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_RECORD_DIRECT_IMPORTS = r"""
import importlib.abc, importlib.metadata, json, sys
seen = set()

class Recorder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or top in ("pollux", "_distutils_hack") or top in sys.modules:
            return None
        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
            frame = frame.f_back
        if frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "pollux":
            seen.add(top)
        return None

sys.meta_path.insert(0, Recorder())
import pollux, pollux.cli, pollux.evaluate, pollux.metaeval, pollux.report, pollux.engine.registry
import pollux.engine.openai_api, pollux.judge, pollux.store, pollux.aggregate
dists = importlib.metadata.packages_distributions()
print(json.dumps({top: dists.get(top, [top]) for top in sorted(seen)}))
"""


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


@pytest.mark.slow  # a fresh interpreter imports every verb: ~10-20 s on 2 busy cores
def test_every_package_the_core_imports_is_a_declared_core_dependency() -> None:
    declared = {_name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    done = subprocess.run([sys.executable, "-c", _RECORD_DIRECT_IMPORTS], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = json.loads(done.stdout.splitlines()[-1])
    assert "typer" in imported and "pydantic" in imported  # the hook sees pollux's own imports
    undeclared = {top: dists for top, dists in imported.items()
                  if not any(d.lower().replace("_", "-") in declared for d in dists)}
    assert not undeclared, f"imported on the core path but not declared in [project].dependencies: {undeclared}"
    assert not {"torch", "transformers", "safetensors", "tokenizers"} & set(imported)
