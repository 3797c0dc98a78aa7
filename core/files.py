"""dlphase's files: every write is atomic (a temporary file in the same folder, synced, then renamed), so a kill
never leaves a partial file; every netCDF read and write holds one lock; outputs are checked before work starts."""

from __future__ import annotations

import errno
import glob
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Sequence

import xarray as xr

from .errors import DiskFullError, DlphaseError


def atomic_write(path: str | os.PathLike, write, suffix: str = ".tmp", needs: int = 0) -> None:
    """Call ``write(tmp)`` on a temporary file in the same folder as ``path``, then rename it to ``path``: never a
    partial file. ``suffix`` ends the temporary name, for writers that go by it (``.png``). A write that fails
    for lack of space raises :class:`DiskFullError`: the writer's ENOSPC, or any failure with fewer than
    ``needs`` bytes (the data's size) and a MiB to spare, since netCDF reports a full disk as an HDF error."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        _fsync(tmp)  # the data reach the disk before the name does, so a power cut leaves no empty file
        os.replace(tmp, path)
        _fsync(path.parent)
    except Exception as exc:
        free = shutil.disk_usage(path.parent).free
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or free < needs + 2**20:
            raise DiskFullError(f"no space left to write {str(path)!r} (about {_size(needs)} needed, {_size(free)} "
                                f"free there)") from None
        raise
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.0f} KiB"


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot sync a folder; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


def temporaries_of(path: str | os.PathLike, suffix: str = ".tmp") -> list[Path]:
    """The temporary files :func:`atomic_write` leaves for ``path`` when a kill cuts a write short."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*{glob.escape(suffix)}"))


#: how every dlphase file is written
NETCDF = {"engine": "netcdf4", "format": "NETCDF4"}
#: HDF5 is not thread-safe, and xarray's locks leave the opening of files outside them: every netCDF read and
#: write of dlphase holds this lock, so that threads (a threaded executor, a dask worker with several threads,
#: the command that reads saved runs while workers write) never enter the library at once
NETCDF_LOCK = threading.RLock()


def _to_netcdf(ds: xr.Dataset, path: str | os.PathLike) -> None:
    with NETCDF_LOCK:
        ds.to_netcdf(path, **NETCDF)


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Write netCDF4 atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: _to_netcdf(ds, tmp), needs=ds.nbytes)


def encode(ds: xr.Dataset) -> bytes:
    """The bytes of ``ds``'s netCDF4 file, as :func:`write_netcdf` writes it: a worker encodes each run it trained,
    so that the process that saves the runs only writes bytes. It goes through a temporary file: netCDF's
    in-memory files are created outside every lock."""
    fd, tmp = tempfile.mkstemp(prefix=".dlphase-encode.", suffix=".nc")
    os.close(fd)
    try:
        _to_netcdf(ds, tmp)
        return Path(tmp).read_bytes()
    finally:
        os.unlink(tmp)


def write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write the bytes of a file atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), needs=len(data))


def open_cube(path: str | os.PathLike, only: Sequence[str] | None = None) -> xr.Dataset:
    """Load a cube (or run file) into memory and close the file: every variable, or ``only`` those of them it has
    (with the coordinates and attributes), which reads no more of the file than they take."""
    path = Path(path)
    if not path.is_file():
        raise DlphaseError(f"cube {str(path)!r} does not exist; give the .nc written by dlphase sweep or run")
    try:
        with NETCDF_LOCK, xr.open_dataset(path, engine="netcdf4") as ds:
            return (ds if only is None else ds[[v for v in only if v in ds]]).load()
    except (OSError, ValueError) as exc:
        raise DlphaseError(f"cannot read {str(path)!r} as netCDF ({exc}); give a cube written by dlphase") from None


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Fail early, with a one-line error, if ``path`` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise DlphaseError(f"{what} {str(path)!r} is a folder; give a file name such as {path / 'out.nc'}")
    if not parent.is_dir():
        raise DlphaseError(f"cannot write {what} {str(path)!r}: folder {str(parent)!r} does not exist; create it first")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".dlphase-write-test.", dir=parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise DlphaseError(f"cannot write {what} {str(path)!r}: {exc.strerror}; choose another path") from None
    return path
