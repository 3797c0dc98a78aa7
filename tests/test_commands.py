"""Commands from plugins: the register_commands hook adds commands to the command line and to its plot group, as
the built-in jamming, kernel and plot hessian-spectrum do; a failing or clashing plugin gives a warning."""

import textwrap

from tests.conftest import install_package, run_cli

SOURCE = textwrap.dedent('''
    import click
    import dlphase


    @click.command()
    @click.argument("who")
    def hello(who):
        """Greet someone."""
        click.echo(f"hello {who}")


    @click.command("margins")
    @click.option("-o", "--output", required=True)
    def margins(output):
        """A plot command of the plugin's own."""
        click.echo(f"margins -> {output}")


    @click.command("sweep")
    def sweep():
        """Tries to replace a built-in command."""
        click.echo("replaced")


    @dlphase.hookimpl
    def register_commands(cli):
        cli.add_command(hello)
        cli.commands["plot"].add_command(margins)
        cli.add_command(sweep)
''')


def test_a_plugin_adds_commands_and_cannot_replace_built_ins(tmp_path, monkeypatch):
    install_package(tmp_path, monkeypatch, "dlphase_hello", SOURCE)
    res = run_cli("hello", "world")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello world\n"
    assert "command 'sweep' from dlphase-hello clashes with one already there; keeping that one" in res.stderr
    res = run_cli("plot", "margins", "-o", "m.png")
    assert res.returncode == 0 and res.stdout == "margins -> m.png\n", res.stderr
    res = run_cli("plot", "--help")
    assert "hessian-spectrum" in res.stdout and "margins" in res.stdout
    res = run_cli("sweep", "--help")
    assert "SPEC.toml" in res.stdout  # the built-in sweep stayed


def test_a_failing_command_plugin_is_skipped_with_a_warning(tmp_path, monkeypatch):
    broken = "import dlphase\n\n@dlphase.hookimpl\ndef register_commands(cli):\n    raise RuntimeError('boom')\n"
    install_package(tmp_path, monkeypatch, "dlphase_broken", broken)
    res = run_cli("jamming", "--help")
    assert res.returncode == 0, res.stderr
    assert "failed to register its commands (RuntimeError: boom); they are skipped" in res.stderr
    assert "h*" in res.stdout  # the built-in plugin's commands are still there
