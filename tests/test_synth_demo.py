"""docs/synth.md's offline demo runs as written: examples/synth_fake_llm.py as its own process and
`pollux synth run examples/synth_offline.toml`, then `pollux train`'s reader accepts the export."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synth_fakes import FakeServer

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "synth_offline.toml"

pytestmark = pytest.mark.slow  # the whole pipeline with the filter's language models: ~30 s on 2 cores


def test_the_docs_name_the_demo_port_the_config_uses() -> None:
    docs = (ROOT / "docs" / "synth.md").read_text(encoding="utf-8")
    port = re.search(r"synth_fake_llm\.py --port (\d+)", docs)
    assert port and f"127.0.0.1:{port.group(1)}/v1" in CONFIG.read_text(encoding="utf-8")
    assert "pollux synth run examples/synth_offline.toml" in docs


def test_the_offline_demo_runs_end_to_end(tmp_path: Path) -> None:
    with FakeServer() as server:
        config = tmp_path / "synth_offline.toml"
        config.write_text(CONFIG.read_text(encoding="utf-8").replace("http://127.0.0.1:8765/v1", server.url),
                          encoding="utf-8")
        done = subprocess.run([sys.executable, "-m", "pollux.cli", "synth", "run", str(config), "--quiet"],
                              capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["annotate"]["new"] > 0 and result["sample"]["held_out_excluded"] > 0
    table = pq.read_table(tmp_path / "synth-offline-run" / "export" / "train.parquet")
    assert 0 < table.num_rows <= 200
    assert "Стайл-трансфер" not in set(table.column("task_type").to_pylist())
