"""`python -m pollux.train …` = `pollux train …`; the form `accelerate launch -m pollux.train …` needs."""

import typer

from pollux.cli.train import train_command

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(train_command)

if __name__ == "__main__":
    app()
