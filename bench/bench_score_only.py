"""Score-only mode's cost (issue 21 item 3): a `-r` judge's head scores at a capped rationale length.

The regression head was trained reading prompt + whole rationale (at its `<|im_end|>`). With
`max_new_tokens=0` it reads the prompt's last token instead, with a cap of N it reads the N-th
rationale token: inputs it never saw. This prints, per engine and cap, the head's Spearman and MAE
against the held-out rows' known scores, and judgements/s — the curve docs/laptop.md publishes.

    python bench/bench_score_only.py --checkpoint RUN/final --rows test.jsonl --template T.txt
    python bench/bench_score_only.py ... --gguf      # the same caps on the judge's f16 GGUF too

Each (engine, cap) runs the rows once in its own process (`bench_gguf.isolated`), greedy. "full" is
`--full` new tokens (default 1024: no rationale of a trained judge is cut). Not a timed test: a
shared machine's load shows in wall time, so CPU time is printed too.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from bench_gguf import against_known, isolated, load_rows


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="A -r judge folder, e.g. `pollux train`'s final.")
    p.add_argument("--rows", type=Path, required=True, help="Held-out rows (JSONL with a known `score`).")
    p.add_argument("--template", type=Path, help="The judge's prompt template file (default: pollux's).")
    p.add_argument("--caps", default="0,16,64,full", help="max_new_tokens values, comma-separated ('full': --full).")
    p.add_argument("--full", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gguf", action="store_true", help="Also on the judge's f16 GGUF (needs llama-cpp-python and "
                   "llama.cpp's converter).")
    return p.parse_args()


def main() -> None:
    os.environ.setdefault("POLLUX_GGUF_EXTRA_BUFFERS", "0")  # see bench_gguf.main
    a = parse_args()
    work, known = load_rows(a.rows)
    caps = [(c, a.full if c == "full" else int(c)) for c in a.caps.split(",")]
    template = str(a.template) if a.template else None
    print(f"judge: {a.checkpoint}; {len(work)} held-out rows ({a.rows}); greedy, {a.threads} threads, "
          "each (engine, cap) in its own process")
    results: list[tuple[str, str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-score-only-") as tmp:
        engines = [("in-process float32", "in-process", str(a.checkpoint))]
        if a.gguf:
            from pollux.convert import convert_checkpoint

            f16 = Path(tmp) / "judge-f16.gguf"
            convert_checkpoint(a.checkpoint, f16, "f16")
            engines.append(("gguf f16", "gguf", str(f16)))
        for name, method, path in engines:
            for label, cap in caps:
                results.append((name, label, isolated(method, path, work, template, cap, a.threads)))
    print(f"{'engine':<20}{'max_new_tokens':>15}{'new tok/item':>13}{'judgements/s':>13}{'CPU s':>8}   "
          "head vs the known scores")
    for name, label, r in results:
        errors = f"  errors: {len(r['errors'])}, e.g. {r['errors'][0]}" if r["errors"] else ""
        print(f"{name:<20}{label:>15}{r['new_tokens']:>13.1f}{len(work) / r['wall']:>13.2f}{r['cpu']:>8.2f}   "
              f"{against_known(r, known)}{errors}")


if __name__ == "__main__":
    main()
