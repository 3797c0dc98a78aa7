"""Reading the jamming line that ``dlphase jamming`` writes: h*(alpha_tilde) per P, with the next width tried, for
the phase diagram and the jamming analyses."""

from __future__ import annotations

import os

import numpy as np
import xarray as xr

from dlphase import open_cube
from dlphase.errors import DlphaseError


def open_line(path: str | os.PathLike) -> xr.Dataset:
    """A file written by dlphase jamming; an error naming it when it holds no line."""
    line = open_cube(path)
    if "h_star" not in line:
        raise DlphaseError(f"{str(path)!r} has no jamming line (h_star); give the LINE.nc written by dlphase jamming")
    return line


def jamming_curve(line: xr.Dataset, P: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(h, alpha_tilde) of the line at one P for drawing: the geometric mean of h* and the next width tried."""
    if "h_star" not in line:
        raise DlphaseError("this file has no jamming line (h_star); give the LINE.nc written by dlphase jamming")
    P = int(line["P"].max()) if P is None else P
    if P not in line["P"].values:
        raise DlphaseError(f"the jamming line has no P = {P}; it holds P = {', '.join(map(str, line['P'].values))}")
    sel = line.sel(P=P).sortby("alpha_tilde")
    mid = np.sqrt(sel["h_star"].values * sel["h_next"].values)
    ok = np.isfinite(mid)
    return mid[ok], sel["alpha_tilde"].values[ok]
