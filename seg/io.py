"""NIfTI reading with one-line errors, and atomic writing.

Errors name the file and the problem. Writes go to a temporary file in the destination folder and are
renamed into place, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from seg.errors import SegError, one_line

# Two grids are the same when their affines agree to this (mm and direction cosines): header round-off,
# not a different grid. The one tolerance for the dataset check, seg-predict's channel check and seg-eval.
GRID_TOL = 1e-3


class NiftiError(SegError, ValueError):
    """An input volume cannot be used; ``str(e)`` is one line naming the problem (the caller adds the path)."""


@dataclass
class NiftiVolume:
    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    path: str


def read_nifti(path: str | Path) -> NiftiVolume:
    """Load a NIfTI volume fully (so truncation is found now, not mid-training)."""
    path = str(path)
    if not os.path.exists(path):
        raise NiftiError("file is missing")
    if os.path.getsize(path) == 0:
        raise NiftiError("file is empty")
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except (EOFError, zlib.error, OSError) as e:
        raise NiftiError(f"unreadable or truncated ({one_line(e)})") from None
    except Exception as e:  # nibabel raises several types for a bad header
        raise NiftiError(f"not a readable NIfTI file ({one_line(e)})") from None
    return NiftiVolume(data=data, affine=np.asarray(img.affine, dtype=np.float64), header=img.header, path=path)


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` sets it, racing other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` for a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp made it 0600; a file seg writes is as the umask says
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def on_grid_of(data: np.ndarray, reference: nib.Nifti1Image, dtype=None) -> nib.Nifti1Image:
    """``data`` as an image on exactly ``reference``'s grid: its affine, qform and sform with their codes (a
    mask or probability map seg writes lands where the input was, whatever its header kind). The one place
    that copies them."""
    hdr = reference.header.copy()
    if dtype is not None:
        hdr.set_data_dtype(dtype)
    hdr.set_slope_inter(1.0, 0.0)
    if len(hdr.get_data_shape()) != data.ndim:
        hdr.set_data_shape(data.shape)
    img = nib.Nifti1Image(data if dtype is None else data.astype(dtype), reference.affine, header=hdr)
    img.set_qform(reference.get_qform(), code=int(reference.header["qform_code"]))
    img.set_sform(reference.get_sform(), code=int(reference.header["sform_code"]))
    return img


def save_nifti(img: nib.Nifti1Image, path: str | Path) -> None:
    """Write ``img`` atomically."""
    atomic_write_bytes(path, lambda tmp: nib.save(img, tmp))


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""

    def _w(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write_bytes(path, _w)
