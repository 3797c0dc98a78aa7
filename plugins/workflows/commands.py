"""The built-in commands that are workflows rather than core: ``dlphase jamming`` (the jamming-line search),
``dlphase kernel`` (one grid point's kernel set) and ``dlphase plot hessian-spectrum``. They register through the
``register_commands`` hook, as a third-party package's commands do."""

from __future__ import annotations

import click

import dlphase
from dlphase.cli import SET_HELP, check_suffix, cluster_options, one_point, spec_from, with_cluster_config


@click.command()
@click.argument("spec_path", metavar="SPEC.toml")
@click.option("-o", "--output", required=True, metavar="K.nc",
              help="where to write the kernel set and its Gram matrices")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--trained", is_flag=True, help="also train the point and store the NTK at the end (ntk_end)")
def kernel(spec_path, output, overrides, trained):
    """Export one grid point's kernel set: inputs, labels, the empirical NTK at init (and, with --trained, at
    the end) and the infinite-width NTK and NNGP where the architecture has them."""
    from dlphase.files import check_writable, write_netcdf
    from dlphase.plugins.workflows.kernel_export import kernel_dataset

    check_suffix(output, (".nc",))
    spec = spec_from(spec_path, overrides)
    one_point(spec, "dlphase kernel")
    check_writable(output, "output")
    ds = kernel_dataset(spec, trained=trained)
    write_netcdf(ds, output)
    names = [k for k in ("ntk_init", "ntk_end", "ntk_infinite", "nngp_infinite") if k in ds]
    click.echo(f"{ds.sizes['kernel_i']} kernel points, {', '.join(names)} -> {output}")


@click.command()
@click.argument("spec_path", metavar="SPEC.toml")
@click.option("-o", "--output", required=True, metavar="LINE.nc",
              help="the line and every run of the search; finished runs go to LINE.runs/")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--h-max", type=click.IntRange(min=1), default=None,
              help="largest width to try (default: 8 times the grid's largest)")
@click.option("--resolution", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="stop bisecting when the gap is at most resolution * h (0: consecutive widths)")
@click.option("--spectrum/--no-spectrum", default=True, show_default=True,
              help="add the hessian_spectrum observable, so that the spectrum at h* is stored")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="runs in parallel, each in its own process with cores/workers torch threads")
@cluster_options
@click.option("-q", "--quiet", is_flag=True, help="no progress bar")
def jamming(spec_path, output, overrides, h_max, resolution, spectrum, workers, scheduler, cluster, cluster_config,
            quiet):
    """Find the jamming line h*(alpha_tilde): at each alpha_tilde and P of the grid, scan the grid's widths, then
    bisect, for the largest h at which every seed ends with N_Delta > 0. Stores N_Delta / N and the Hessian
    spectrum there, and the training budget the line depends on."""
    import numpy as np

    from dlphase.cluster import dask_executor
    from dlphase.files import check_writable
    from dlphase.plugins.workflows.jamming import find_jamming_line

    check_suffix(output, (".nc",))
    spec = with_cluster_config(spec_from(spec_path, overrides), cluster_config)
    check_writable(output, "line")  # before a cluster starts
    with dask_executor(scheduler, cluster, workers, spec.cluster) as executor:
        line = find_jamming_line(spec, output, h_max=h_max, resolution=resolution, spectrum=spectrum,
                                 workers=workers, executor=executor, progress=not quiet)
    for a in line["alpha_tilde"].values:
        for P in line["P"].values:
            pt = line.sel(alpha_tilde=a, P=P)
            text = f"alpha_tilde={a:g} P={P}: "
            if np.isfinite(pt["h_star"]):
                text += (f"h* = {int(pt['h_star'])} (N = {int(pt['n_params_star'])}, N_Delta/N = "
                         f"{float(pt['n_delta_over_n_star'].mean()):.3f})")
                if np.isfinite(pt["h_next"]):
                    text += f", next width {int(pt['h_next'])}"
            if pt["jamming_outcome"].item() != "found":
                text += f" [{pt['jamming_outcome'].item()}]"
            click.echo(text)
    click.echo(f"{int((line['status'] != '').sum())} runs -> {output}")


@click.command("hessian-spectrum")
@click.argument("cube_path", metavar="CUBE.nc")
@click.option("-o", "--output", required=True, metavar="FILE.html|FILE.png")
@click.option("--matrix", type=click.Choice(["h0", "h", "hp"]), default="h0", show_default=True)
@click.option("--h", "h", type=int, default=None, help="which width (needed when the cube holds several)")
@click.option("--alpha-tilde", "alpha_tilde", type=float, default=None)
@click.option("--P", "P", type=int, default=None)
@click.option("--seed", type=int, default=None)
def hessian_spectrum(cube_path, output, matrix, h, alpha_tilde, P, seed):
    """Histogram of log10 |eigenvalue| of H0 (or H, Hp) for one run: the delta peak, gap and continuum at jamming."""
    from dlphase.analyses.hessian_spectrum import save_hessian_spectrum
    from dlphase.files import check_writable, open_cube

    check_suffix(output, (".html", ".png"))
    check_writable(output, "plot")
    cube = open_cube(cube_path)
    save_hessian_spectrum(cube, output, matrix, h=h, alpha_tilde=alpha_tilde, P=P, seed=seed)
    click.echo(f"{matrix} spectrum -> {output}")


@dlphase.hookimpl
def register_commands(cli):
    cli.add_command(jamming)
    cli.add_command(kernel)
    cli.commands["plot"].add_command(hessian_spectrum)
