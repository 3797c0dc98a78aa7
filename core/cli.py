"""The ``dlphase`` command line: run, sweep, plugins, analyze, plot, report, and the commands plugins add
(``register_commands``: the built-in jamming, kernel and plot hessian-spectrum among them).

Bad input (a spec, a path, a name) gives one line ``error: ...`` on stderr and exit status 2, with no
traceback and no output file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import DlphaseError
from .results import STATUSES

SET_HELP = "override a spec value, e.g. --set grid.h=100 or --set dataset.pca=5 (repeatable)"


def _fail(message: str) -> None:
    click.echo(f"error: {' '.join(str(message).split())}", err=True)
    sys.exit(2)


class Group(click.Group):
    """Turns usage errors and :class:`DlphaseError` into one line and exit status 2."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except click.exceptions.NoArgsIsHelpError as exc:
            group = exc.ctx.command if exc.ctx else None
            commands = ", ".join(group.list_commands(exc.ctx)) if isinstance(group, click.Group) else ""
            _fail(f"`{exc.ctx.command_path}` needs a command: {commands} (see `{exc.ctx.command_path} --help`)")
        except click.UsageError as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
            _fail(exc.format_message() + hint)
        except click.ClickException as exc:
            _fail(exc.format_message())
        except DlphaseError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            sys.exit(130)
        if isinstance(rv, int) and rv:
            sys.exit(rv)


def spec_from(path: str, overrides: tuple[str, ...]):
    from .specs import load_spec

    return load_spec(path, overrides)


def check_suffix(path: str, allowed: tuple[str, ...]) -> None:
    if Path(path).suffix.lower() not in allowed:
        raise DlphaseError(f"output {path!r} must end in {' or '.join(allowed)}")


def one_point(spec, command: str):
    """The spec's grid points, which must be one."""
    points = spec.grid.points()
    if len(points) != 1:
        many = [k for k in ("h", "alpha_tilde", "P", "seed") if len(getattr(spec.grid, k)) > 1]
        raise DlphaseError(f"grid.{many[0]} has {len(getattr(spec.grid, many[0]))} values but {command} takes "
                           f"one point; pick one with --set grid.{many[0]}=VALUE, or use dlphase sweep")
    return points


def cluster_options(command):
    """--scheduler and --cluster: where the runs execute (dlphase.cluster)."""
    command = click.option("--cluster", default=None, type=click.Choice(["local", "slurm", "pbs", "sge"]),
                           help="start a dask cluster: local (--workers processes here), or batch jobs on slurm, "
                                "pbs or sge as the spec's [cluster] says")(command)
    command = click.option("--cluster-config", default=None, metavar="CLUSTER.toml",
                           help="cluster settings from this file instead of the spec's [cluster]")(command)
    return click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
                        help="run on the workers of this dask scheduler")(command)


def with_cluster_config(spec, path):
    """The spec with the [cluster] settings of ``path`` (when given)."""
    import attrs

    from .specs import load_cluster_settings

    return spec if path is None else attrs.evolve(spec, cluster=load_cluster_settings(path))


class Main(Group):
    """The root group: its own commands, then those plugins add through the ``register_commands`` hook (loaded
    the first time a command is looked up that is not its own, or the commands are listed)."""

    plugins_loaded = False

    def load_plugin_commands(self) -> None:
        if not self.plugins_loaded:
            self.plugins_loaded = True
            from .manager import get_manager

            get_manager().register_commands(self)

    def list_commands(self, ctx):
        self.load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and not self.plugins_loaded:
            self.load_plugin_commands()
            command = super().get_command(ctx, name)
        return command


def plugin_commands_of(ctx) -> None:
    """Load the plugins' commands of the root group (a subgroup's plugin commands are added there)."""
    root = ctx.find_root().command if ctx is not None else None
    if isinstance(root, Main):
        root.load_plugin_commands()


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dlphase")
def main():
    """dlphase: phase diagrams, jamming and lazy vs feature learning of deep nets."""
    import warnings

    warnings.formatwarning = _one_line


def _one_line(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line as one line each, without the source line."""
    return f"warning: {message}\n"


@main.command()
@click.argument("spec_path", metavar="SPEC.toml")
@click.option("-o", "--output", required=True, metavar="RUN.nc", help="where to write the run's cube")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
def run(spec_path, output, overrides):
    """Train one grid point and write it as a cube with one value per grid dim."""
    from .cube import combine
    from .files import check_writable, write_netcdf
    from .grid_point import execute

    check_suffix(output, (".nc",))
    spec = spec_from(spec_path, overrides)
    points = one_point(spec, "dlphase run")
    check_writable(output, "output")
    ds = execute(spec, points[0])
    write_netcdf(combine([ds], spec), output)
    status = ds["status"].item()
    summary = f"{status}: steps={int(ds['steps'])} t={float(ds['t']):.4g} wall={float(ds['wall_seconds']):.1f}s"
    if "test_error" in ds:
        summary += f" test_error={float(ds['test_error']):.4f} n_delta={int(ds['n_delta'])}"
    if status == "failed":
        summary += f" ({ds['message'].item()})"
    click.echo(f"{summary} -> {output}")


@main.command()
@click.argument("spec_path", metavar="SPEC.toml")
@click.option("-o", "--output", required=True, metavar="CUBE.nc", help="the cube; finished runs go to CUBE.runs/")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="runs in parallel, each in its own process with cores/workers torch threads")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--retry-failed", is_flag=True, help="run again the points whose saved status is failed")
@cluster_options
@click.option("-q", "--quiet", is_flag=True, help="no progress bar")
def sweep(spec_path, output, workers, overrides, retry_failed, scheduler, cluster, cluster_config, quiet):
    """Run the Cartesian product of [grid], resumably, and combine it into CUBE.nc."""
    from .cluster import dask_executor
    from .sweep import sweep as run_sweep

    from .files import check_writable

    check_suffix(output, (".nc",))
    spec = with_cluster_config(spec_from(spec_path, overrides), cluster_config)
    check_writable(output, "output")  # before a cluster starts
    with dask_executor(scheduler, cluster, workers, spec.cluster) as executor:
        cube = run_sweep(spec, output, workers=workers, executor=executor, retry_failed=retry_failed,
                         progress=not quiet)
    counts = {s: int((cube["status"] == s).sum()) for s in STATUSES}
    click.echo(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" -> {output}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def plugins(as_json):
    """List every installed plugin by kind, with its origin package and parameters."""
    from .manager import get_manager

    described = get_manager().describe()
    if as_json:
        click.echo(json.dumps(described, indent=2, default=repr))
        return
    kind = None
    for item in described:
        if item["kind"] != kind:
            kind = item["kind"]
            click.echo(f"\n{kind}:")
        click.echo(f"  {item['name']:<18} [{item['origin']}] {item['description']}")
        for p in item["parameters"]:
            default = json.dumps(p["default"], default=repr)
            click.echo(f"      {p['name']} ({p['type']}, default {default}): {p['doc']}")


def _analysis_options(cls) -> list[click.Option]:
    """One option per parameter of an analysis class, typed from its annotation (--over seed, --n-boot 200)."""
    import types
    import typing

    import attrs

    hints = typing.get_type_hints(cls)
    options = []
    for f in attrs.fields(cls):
        if not f.init:
            continue
        tp = hints.get(f.name, str)
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        flag = f"--{f.name.replace('_', '-')}"
        doc = f.metadata.get("doc", "")
        default = None if f.default is attrs.NOTHING else f.default
        helptext = f"{doc} (default: {default})" if default is not None else doc
        if tp is bool:
            options.append(click.Option([f"{flag}/--no-{f.name.replace('_', '-')}", f.name], default=None,
                                        help=helptext))
        elif typing.get_origin(tp) is tuple:
            element = {int: click.INT, float: click.FLOAT}.get(typing.get_args(tp)[0], click.STRING)
            options.append(click.Option([flag, f.name], type=element, multiple=True, default=None,
                                        help=f"{helptext}; repeat the option for several values"))
        elif typing.get_origin(tp) is typing.Literal:
            options.append(click.Option([flag, f.name], type=click.Choice(typing.get_args(tp)), default=None,
                                        help=helptext))
        else:
            kind = {int: click.INT, float: click.FLOAT}.get(tp, click.STRING)
            options.append(click.Option([flag, f.name], type=kind, default=None, help=helptext))
    return options


class AnalysisGroup(Group):
    """A group whose subcommands are its own commands plus one per registered analysis (third-party ones too)."""

    def __init__(self, *args, make=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.make = make

    def list_commands(self, ctx):
        from .manager import get_manager

        plugin_commands_of(ctx)
        names = {n.replace("_", "-") for n in get_manager().names("analysis")}
        return sorted(set(super().list_commands(ctx)) | names)

    def get_command(self, ctx, name):
        plugin_commands_of(ctx)
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        from .manager import get_manager

        manager = get_manager()
        canonical = name.replace("-", "_")
        if canonical in manager.names("analysis"):
            return self.make(canonical, manager.get("analysis", canonical))
        return None

    def resolve_command(self, ctx, args):
        if args and not args[0].startswith("-") and self.get_command(ctx, args[0]) is None:
            raise click.UsageError(f"unknown analysis {args[0]!r}; installed: {', '.join(self.list_commands(ctx))}",
                                   ctx)
        return super().resolve_command(ctx, args)


def _first_line(cls) -> str:
    import inspect

    return (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")


def _analyze_command(name: str, cls) -> click.Command:
    def callback(cube_path, as_json, output, **options):
        from dlphase.analyses.dispatch import analyze, text, to_json

        from .files import check_writable, open_cube, write_netcdf

        if output is not None:
            check_suffix(output, (".nc",))
            check_writable(output, "result")
        analysis, result = analyze(open_cube(cube_path), name, **options)
        if output is not None:
            write_netcdf(result, output)
        click.echo(to_json(analysis, result) if as_json else text(analysis, result).rstrip())
        if output is not None and not as_json:
            click.echo(f"-> {output}")

    params = [click.Argument(["cube_path"], metavar="CUBE.nc"),
              click.Option(["--json", "as_json"], is_flag=True, help="print the result as JSON"),
              click.Option(["-o", "--output"], metavar="RESULT.nc", default=None, help="also store the result")]
    return click.Command(name.replace("_", "-"), params=params + _analysis_options(cls), callback=callback,
                         help=_first_line(cls))


def _plot_command(name: str, cls) -> click.Command:
    def callback(cube_path, output, **options):
        from dlphase.analyses.dispatch import analyze, save_plot

        from .files import check_writable, open_cube

        check_suffix(output, (".html", ".png"))
        check_writable(output, "plot")
        analysis, result = analyze(open_cube(cube_path), name, **options)
        save_plot(analysis, result, output)
        click.echo(f"{analysis.name.replace('_', '-')} -> {output}")

    params = [click.Argument(["cube_path"], metavar="CUBE.nc"),
              click.Option(["-o", "--output"], required=True, metavar="FILE.html|FILE.png")]
    return click.Command(name.replace("_", "-"), params=params + _analysis_options(cls), callback=callback,
                         help=_first_line(cls))


@main.group(cls=AnalysisGroup, make=_analyze_command)
def analyze():
    """Run an analysis on a cube and print its result as a table (or JSON); -o stores it as netCDF."""


@main.group(cls=AnalysisGroup, make=_plot_command)
def plot():
    """Draw a figure from a cube (HTML with bokeh, PNG with matplotlib)."""


@main.command()
@click.argument("cube_path", metavar="CUBE.nc")
@click.option("-o", "--output", required=True, metavar="REPORT.html")
def report(cube_path, output):
    """One self-contained HTML page: every analysis that applies to the cube (summary, plot, table), what was
    skipped and why, and the spec and provenance."""
    from dlphase.analyses.report import write_report

    from .files import check_writable, open_cube

    check_suffix(output, (".html",))
    check_writable(output, "report")
    done = write_report(open_cube(cube_path), output, source=cube_path)
    click.echo(f"{len(done)} analyses ({', '.join(done)}) -> {output}")


if __name__ == "__main__":  # python -m dlphase.cli
    main()
