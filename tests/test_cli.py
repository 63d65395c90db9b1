"""The `pollux` command line as a whole: the root command, help output, and the engine flags that
every judging verb shares (generated from the engine registry, see `pollux.cli._options`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pollux.cli import app

RUBRIC = "0: неверно.\n\n1: частично.\n\n2: верно."
# Every verb that judges; meta-eval is converted to the generated engine flags by the lead (H5 owns
# cli/meta_eval.py while this test is written): strict xfail, so the conversion makes it fail until
# the mark is removed.
JUDGING_VERBS = ["judge", "evaluate", "serve", "ui", "meta-eval"]
HEAVY = ("scipy", "pandas", "torch", "transformers", "pyarrow")


def test_version_prints_the_version() -> None:
    from pollux import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == __version__


def test_help_imports_no_heavy_library() -> None:
    """`pollux --help` and each verb's help (a fresh interpreter, as a user runs it) import neither
    scipy/pandas nor torch: help must be instant."""
    verbs = ["judge", "evaluate", "serve", "ui", "meta-eval", "report", "train", "criteria"]
    code = (
        "import json, sys\n"
        "from pollux.cli import app\n"
        f"for args in [['--help'], *[[v, '--help'] for v in {verbs!r}]]:\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (args, e.code)\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == []


@pytest.mark.parametrize("verb", ["judge", "evaluate", "serve", "ui"])
def test_help_fits_80_columns_with_whole_option_names(verb: str) -> None:
    """Every option name of the verb appears whole in an 80-column help (rich's tables cut them:
    `--max-new-toke…`), plain flags show no `<bool>`, and no line is wider than the terminal."""
    result = CliRunner().invoke(app, [verb, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    command = typer.main.get_command(app).commands[verb]  # type: ignore[attr-defined]
    for param in command.params:
        for name in [*param.opts, *param.secondary_opts]:
            if name.startswith("-"):
                assert name in result.stdout, name
    assert "--share-prefix / --no-share-prefix" in result.stdout
    assert "<bool>" not in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


@pytest.mark.parametrize(("args", "lists"), [(["criteria"], ("list", "show")), ([], ("judge", "criteria")),
                                             (["synth"], ("run", "status"))])
def test_a_command_group_alone_shows_its_help_and_succeeds(args: list[str], lists: tuple[str, ...]) -> None:
    """`pollux criteria` alone used to be a usage error (exit 2): it shows what it offers, exit 0."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Commands:" in result.stdout and all(name in result.stdout for name in lists)


def _help_flags(verb: str, root: typer.Typer = app) -> dict[str, str | None]:
    """The engine options a verb's click command takes: {registry name: help}."""
    from pollux.cli._options import ENGINE_PARAM_PREFIX

    group = typer.main.get_command(root)
    command = group.commands[verb]  # type: ignore[attr-defined]
    return {p.name.removeprefix(ENGINE_PARAM_PREFIX): getattr(p, "help", None)
            for p in command.params if p.name and p.name.startswith(ENGINE_PARAM_PREFIX)}


@pytest.mark.parametrize("verb", JUDGING_VERBS)
def test_every_judging_verb_takes_the_same_engine_flags(verb: str) -> None:
    """The flags come from the registry's option classes: every judging verb has all of them with
    one help text (a verb that declares one itself, as serve's --batch-size, keeps its own)."""
    from pollux.engine.registry import option_flags

    expected = {f.name: f.help for f in option_flags()} | {"option": _help_flags("judge")["option"]}
    own = {"serve": {"batch_size"}}.get(verb, set())
    assert _help_flags(verb) == {k: v for k, v in expected.items() if k not in own}
    shown = CliRunner().invoke(app, [verb, "--help"], env={"COLUMNS": "200"}).stdout
    for flag in option_flags():
        if flag.name not in own and flag.name != "seed":  # meta-eval: --sampling-seed
            assert flag.flag in shown, (verb, flag.flag)


def test_an_option_added_to_an_engine_appears_in_every_judging_verb(monkeypatch: pytest.MonkeyPatch) -> None:
    """One field with a flag on an engine's options class → a flag of every judging verb, same help."""
    from pydantic import Field

    from pollux.cli import evaluate, judge, serve, ui
    from pollux.engine import registry

    class Widened(registry.LocalOptions):
        beam_width: int | None = Field(None, ge=1, description="Beams.",
                                       json_schema_extra=registry.cli("--beam-width", "Local judges: beams kept."))

    local = registry.get_engine("local")
    monkeypatch.setitem(registry._ENGINES, "local", registry.EngineEntry(
        local.name, local.prefix, Widened, local.loader, local.summary))
    fresh = typer.Typer()
    for module in (judge, evaluate, serve, ui):
        module.register(fresh)
    for verb in ("judge", "evaluate", "serve", "ui"):
        assert _help_flags(verb, fresh)["beam_width"] == "Local judges: beams kept."
        result = CliRunner().invoke(fresh, [verb, "--help"], env={"COLUMNS": "200"})
        assert "--beam-width" in result.stdout
    given: dict[str, object] = {}

    def record(**kwargs: object) -> None:
        given.update(kwargs["engine_options"])  # type: ignore[arg-type]

    from pollux.cli._options import with_engine_options

    def verb(spec: str = typer.Option(..., "--judge"), engine_options: dict | None = None) -> None:
        record(engine_options=engine_options)

    probe = typer.Typer()
    probe.command("probe")(with_engine_options(verb))
    probe.command("other")(lambda: None)
    result = CliRunner().invoke(probe, ["probe", "--judge", "x", "--beam-width", "4", "--max-new-tokens", "9",
                                        "-o", "max_retries=2"])
    assert result.exit_code == 0, result.output
    assert given == {"beam_width": 4, "max_new_tokens": 9, "max_retries": "2"}


def test_a_changed_option_on_resume_is_refused_before_the_judge_loads(tmp_path: Path,
                                                                      tiny_judge_path: Path) -> None:
    """The second run changes --max-new-tokens; its weights are gone, so a judge load would fail with a
    checkpoint error: the refusal must come first, from the run store's recorded configuration."""
    weights = tmp_path / "judge"
    shutil.copytree(tiny_judge_path, weights)
    row = {"id": "q1", "model_id": "m", "instruction": "Сколько будет 2+2?", "answer": "4",
           "criteria_name": "Правильность", "rubrics": RUBRIC}
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    command = ["evaluate", str(src), "--judge", str(weights), "--db", str(tmp_path / "run.db"), "--dtype",
               "float32", "--device", "cpu", "--no-progress"]
    first = CliRunner().invoke(app, [*command, "--max-new-tokens", "8"])
    assert first.exit_code == 0, first.output
    shutil.rmtree(weights)
    again = CliRunner().invoke(app, [*command, "--max-new-tokens", "16"])
    assert again.exit_code == 2
    assert "different configuration" in again.stderr and "max_new_tokens: 8 → 16" in again.stderr
    assert "--new-run" in again.stderr
