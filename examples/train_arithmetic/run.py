"""Worked example: train a tiny POLLUX-style judge from scratch on this CPU and watch it learn.

1. generates the data (`make_data.py`): Russian arithmetic questions, the true result as the
   reference answer, right / slightly wrong / wrong answers, criterion «Правильность ответа» (0–2);
2. builds a small random `Qwen2WithRegressionHead` with the real Qwen tokenizer (pollux.fixtures);
3. judges the held-out test rows with it — the way inference does: the LM head generates the
   rationale, the regression head scores prompt + rationale at `<|im_end|>` — and prints Spearman
   and MAE of the head's scores against the known ones;
4. trains it with `pollux.train` (CE on `[FEEDBACK] … [END]` + MSE on the score);
5. judges the test rows again and prints the metrics after training;
6. judges the model card's example item with the trained judge twice — `pollux judge` and the
   model card's own snippet, run without pollux importable — and prints both scores.

    python examples/train_arithmetic/run.py [--out runs/arithmetic]

Everything is local; nothing is downloaded. See docs/training.md for what the numbers mean.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
# The POLLUX template's five sections, reordered so that the reference and the answer come last,
# next to where the judge starts writing: a model trained from scratch finds them much sooner.
TEMPLATE = HERE / "template.txt"

from make_data import make_dataset  # noqa: E402

GOAL_SPEARMAN = 0.8  # the worked example's promise (docs/training.md)
GOAL_WALL_S = 15 * 60
PARITY_TOL = 1e-4  # model card snippet vs `pollux judge`, same checkpoint and item


def fmt(x: float | None) -> str:
    """Spearman is undefined (None) when a judge gives every row the same score."""
    return "n/a" if x is None else f"{x:.3f}"


def judge_rows(model_dir: Path, rows: list[dict], max_new_tokens: int) -> tuple[list[float], list[str]]:
    """Head scores and generated texts of a judge over `rows`, through pollux's inference engine."""
    from pollux.engine import SamplingParams
    from pollux.judge import Judge
    from pollux.prompts import PromptTemplate

    judge = Judge.from_pretrained(str(model_dir), dtype="float32", device="cpu",
                                  template=PromptTemplate(text=TEMPLATE.read_text(encoding="utf-8")),
                                  sampling=SamplingParams(max_new_tokens=max_new_tokens))
    verdicts = judge.judge_many(rows)
    bad = [v.error for v in verdicts if v.error]
    if bad:
        raise RuntimeError(f"{len(bad)} item(s) could not be judged: {bad[0]}")
    return [float(v.head_score) for v in verdicts], [v.raw_text for v in verdicts]


def report(name: str, rows: list[dict], scores: list[float], texts: list[str]) -> dict:
    from pollux.train import head_metrics

    metrics = head_metrics(scores, [r["score"] for r in rows])
    expected = [f"[FEEDBACK] {r['rationale']} [END]" for r in rows]
    metrics["rationale_exact"] = sum(t.strip() == e for t, e in zip(texts, expected, strict=True)) / len(rows)
    print(f"{name}: Spearman {fmt(metrics['spearman'])}  MAE {metrics['mae']:.3f}"
          f"  rationale exact {metrics['rationale_exact']:.1%}"
          f"  (n={len(rows)}; e.g. {texts[0][:60]!r})", flush=True)
    return metrics


def set_rope_theta(model_dir: Path, theta: float) -> None:
    """Set the RoPE base of a freshly built (untrained) model: a small base gives a from-scratch
    model sharper position signals for its short sequences."""
    cfg_file = model_dir / "config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    if isinstance(cfg.get("rope_parameters"), dict):
        cfg["rope_parameters"]["rope_theta"] = theta
    cfg["rope_theta"] = theta
    cfg_file.write_text(json.dumps(cfg, indent=2), encoding="utf-8")


def snippet_vs_pollux_judge(model_dir: Path, workdir: Path) -> dict:
    """The model card's snippet (pollux hidden: -S skips the editable install's .pth) and
    `pollux judge` on the snippet's own item: the same score is expected (|Δ| ≤ 1e-4)."""
    from pollux.engine.reference import model_card_snippet_literals, run_model_card_snippet

    snippet = ROOT / "examples" / "model_card_snippet.py"
    card_text, card_score = run_model_card_snippet(snippet, model_dir, cwd=workdir, timeout=1800)
    lit = model_card_snippet_literals(snippet)
    cli = subprocess.run(
        [sys.executable, "-m", "pollux.cli", "judge", "--judge", str(model_dir), "--template", "model-card",
         "--instruction", lit["instruction"],
         "--answer", lit["answer"], "--reference", lit["reference_answer"], "--criterion", lit["criteria_name"],
         "--rubrics", lit["criteria_rubrics"], "--max-new-tokens", "4096", "--device", "cpu"],
        capture_output=True, text=True, timeout=1800)
    if cli.returncode != 0:
        raise RuntimeError(f"pollux judge failed:\n{cli.stderr[-2000:]}")
    verdict = json.loads(cli.stdout)
    out = {"model_card_score": float(card_score), "pollux_judge_score": verdict["head_score"],
           "abs_diff": abs(float(card_score) - verdict["head_score"]),
           "same_text": verdict["raw_text"] == card_text, "text": verdict["raw_text"]}
    print(f"model card snippet: {out['model_card_score']:.6f}   pollux judge: {out['pollux_judge_score']:.6f}"
          f"   |Δ| = {out['abs_diff']:.2e}   same rationale: {out['same_text']}   ({out['text'][:60]!r})", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/arithmetic"))
    p.add_argument("--train-rows", type=int, default=6000)
    p.add_argument("--test-rows", type=int, default=120)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=None, help="MLP width (default: 2 × hidden).")
    p.add_argument("--init-std", type=float, default=0.125,
                   help="Initial weight std; ~1/sqrt(hidden) (0.02, a large model's value, starts on a long plateau).")
    p.add_argument("--rope-theta", type=float, default=10_000.0,
                   help="RoPE base of the new model (0: keep Qwen2.5's 1e6, made for long contexts).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true",
                   help=f"Exit 1 unless the goal is met (held-out Spearman ≥ {GOAL_SPEARMAN} within {GOAL_WALL_S} s) "
                        "and the model card's snippet agrees with `pollux judge`.")
    p.add_argument("--skip-parity", action="store_true", help="Skip the model card snippet vs pollux judge check.")
    a = p.parse_args()

    import torch

    from pollux.fixtures import build_tiny_judge
    from pollux.train import TrainConfig, train

    torch.manual_seed(a.seed)
    clock = time.time()
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    files = make_dataset(out / "data", train=a.train_rows, valid=60, test=a.test_rows, seed=a.seed)
    test_rows = [json.loads(line) for line in files["test"].read_text(encoding="utf-8").splitlines()]
    base = build_tiny_judge(out / "base", hidden=a.hidden, layers=a.layers, heads=4, kv_heads=2,
                            intermediate=a.intermediate,
                            initializer_range=a.init_std, head_std=0.02, head_bias=1.0, seed=a.seed)
    if a.rope_theta:
        set_rope_theta(base, a.rope_theta)
    print(f"data: {a.train_rows} train / {a.test_rows} test rows (held-out questions); model: hidden {a.hidden}, "
          f"{a.layers} layers, real Qwen tokenizer; {time.time() - clock:.0f} s", flush=True)

    results: dict = {"config": vars(a) | {"out": str(out)}}
    results["before"] = report("before training", test_rows, *judge_rows(base, test_rows, max_new_tokens=16))

    started = time.time()
    result = train(TrainConfig(
        model=str(base), train_file=str(files["train"]), valid_file=str(files["valid"]), output_dir=str(out / "run"),
        template_file=str(TEMPLATE),
        lr=a.lr, warmup_steps=20, batch_size=a.batch_size, micro_batch_size=a.batch_size, max_steps=a.steps,
        eval_every=max(1, a.steps // 3), eval_batch_size=50, log_every=10, seed=a.seed, max_grad_norm=1.0,
    ))
    results["train_s"] = round(time.time() - started, 1)
    results["train_last"] = result.to_dict()["last_train"]
    print(f"trained {a.steps} steps × {a.batch_size} rows in {results['train_s']:.0f} s → {result.final_dir}", flush=True)

    results["after"] = report("after training", test_rows, *judge_rows(Path(result.final_dir), test_rows, 24))
    if not a.skip_parity:
        results["parity"] = snippet_vs_pollux_judge(Path(result.final_dir), out)
    results["wall_s"] = round(time.time() - clock, 1)
    (out / "metrics.json").write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")
    b, f = results["before"], results["after"]
    print(f"SUMMARY  Spearman {fmt(b['spearman'])} → {fmt(f['spearman'])}   MAE {b['mae']:.3f} → {f['mae']:.3f}   "
          f"wall {results['wall_s']:.0f} s   (metrics: {out / 'metrics.json'})", flush=True)
    met = f["spearman"] is not None and f["spearman"] >= GOAL_SPEARMAN and results["wall_s"] <= GOAL_WALL_S
    print(f"goal (held-out Spearman ≥ {GOAL_SPEARMAN} in ≤ {GOAL_WALL_S // 60} min): {'met' if met else 'NOT met'}",
          flush=True)
    parity = results.get("parity")
    same = parity is None or (parity["same_text"] and parity["abs_diff"] <= PARITY_TOL)
    if not same:
        print(f"model card snippet and pollux judge disagree (|Δ| ≤ {PARITY_TOL} and the same rationale expected)",
              flush=True)
    if a.check and not (met and same):
        sys.exit(1)


if __name__ == "__main__":
    main()
