"""The fake OpenAI-compatible LLM server of synth's offline demo (examples/synth_fake_llm.py), as the
tests and bench/bench_synth.py import it: one implementation for the demo, the tests and the benchmark."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from synth_fake_llm import FakeServer, make_app, reply_for

__all__ = ["FakeServer", "make_app", "reply_for"]
