"""`pollux convert`: a judge checkpoint → a GGUF for llama.cpp (`gguf:PATH` judges), with the
regression head and generation config as sidecars beside it (pollux.convert; docs/laptop.md)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def convert_command(
    checkpoint: Path = typer.Argument(..., help="Judge checkpoint folder (an official -r judge, one from "
                                      "`pollux train`, or a generative judge)."),
    out: Path = typer.Argument(..., help="The GGUF file to write, e.g. judge-q4_k_m.gguf (sidecars: "
                               "OUT.head.safetensors, OUT.pollux.json)."),
    quant: str = typer.Option("f16", "--quant", help="f16, q8_0 or q4_k_m (4-bit: the laptop choice)."),
    llama_cpp: Path | None = typer.Option(None, "--llama-cpp", help="A llama.cpp source tree holding "
                                          "convert_hf_to_gguf.py (default: $POLLUX_LLAMA_CPP, else "
                                          "<venv>/llama.cpp)."),
    threads: int | None = typer.Option(None, "--threads", help="Quantisation threads (default: all cores)."),
) -> None:
    """Convert a judge checkpoint to GGUF (llama.cpp's converter and quantiser); prints what it
    wrote as JSON. Judge with it: pollux judge --judge gguf:OUT …"""
    from pollux.checkpoint import CheckpointError
    from pollux.convert import ConvertError, convert_checkpoint

    try:
        result = convert_checkpoint(checkpoint, out, quant, llama_cpp=llama_cpp, threads=threads)
    except (ConvertError, CheckpointError) as e:
        typer.echo(f"pollux convert: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_command)
