"""pollux synth: build a judge's training data the way the POLLUX judges were built.

instructions → filter → criteria → answers → annotate → sample → export, each stage a function from
the run's tables to its own table, keyed by content, resumable after any interruption:

    from pollux.synth import load_config, run, status
    config = load_config("synth.toml")
    run(config)                          # all stages; run(config, ["answers"]) for one
    status(config)

See docs/synth.md.
"""

from __future__ import annotations

from pollux.synth.config import SynthConfig, SynthConfigError, load_config
from pollux.synth.pipeline import STAGES, executor_options, run, status
from pollux.synth.stages import SynthError

__all__ = ["STAGES", "SynthConfig", "SynthConfigError", "SynthError", "executor_options", "load_config", "run",
           "status"]
