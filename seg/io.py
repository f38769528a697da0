"""NIfTI reading with one-line errors, and atomic writing.

Errors name the file and the problem. Writes go to a temporary file in the destination folder and are
renamed into place, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
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
HEADER_BYTES = (348, 1 << 20)  # a single-file NIfTI's bytes before its voxels: the header, up to 1 MB of extensions


class NiftiError(SegError, ValueError):
    """An input volume cannot be used; ``str(e)`` is one line naming the problem (the caller adds the path)."""


@dataclass
class NiftiVolume:
    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    path: str


def _declared_size(img, path: str) -> None:
    """The header's voxels against what the file holds, before any allocation: a header that declares 2000^3
    voxels in a 70-byte file is a lie, not a MemoryError. Uncompressed files are compared by their size,
    gzip files by the uncompressed size their trailer records (modulo 2^32, RFC 1952)."""
    hdr = img.header
    shape = [int(s) for s in hdr.get_data_shape()]
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(hdr.get_data_dtype()).itemsize
    declared = f"its header declares {'x'.join(map(str, shape))} voxels ({nbytes / 1e9:.3g} GB)"
    if path.endswith(".gz"):
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = int.from_bytes(f.read(4), "little")
        # what precedes the voxels (the 348-byte header, its extensions) is what is left of the size modulo 2^32
        if not HEADER_BYTES[0] <= (isize - nbytes) % 2**32 <= HEADER_BYTES[1]:
            raise NiftiError(f"{declared} that the file does not hold: truncated or a wrong header")
    elif os.path.getsize(path) - nbytes < HEADER_BYTES[0]:
        raise NiftiError(f"{declared} but the file has {os.path.getsize(path)} bytes: truncated")


def read_nifti(path: str | Path) -> NiftiVolume:
    """Load a NIfTI volume fully (so truncation is found now, not mid-training); refuse what has no usable
    grid or data, in one line (the caller adds the path)."""
    path = str(path)
    if not os.path.exists(path):
        raise NiftiError("file is missing")
    if not os.path.isfile(path):
        raise NiftiError("not a regular file (a folder, a device or a pipe)")
    if os.path.getsize(path) == 0:
        raise NiftiError("file is empty")
    try:
        img = nib.load(path)
        _declared_size(img, path)
        if not np.isfinite(img.affine).all():
            raise NiftiError("its affine has NaN or infinite entries: no grid to read it on")
        data = np.asanyarray(img.dataobj)
    except NiftiError:
        raise
    except PermissionError:
        raise NiftiError("not readable (permission denied)") from None
    except MemoryError:
        raise NiftiError("too large to read into memory") from None
    except (EOFError, zlib.error, OSError) as e:
        raise NiftiError(f"unreadable or truncated ({one_line(e)})") from None
    except Exception as e:  # nibabel raises several types for a bad header
        raise NiftiError(f"not a readable NIfTI file ({one_line(e)})") from None
    return NiftiVolume(data=data, affine=np.asarray(img.affine, dtype=np.float64), header=img.header, path=path)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (ties an exported ONNX file to its bundle)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_root() -> Path:
    """seg's own cache folder: ``$SEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/seg``, else ``~/.cache/seg`` (the
    probe memory and the pre-processed data cache live there, never in a dataset's folder)."""
    root = os.environ.get("SEG_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seg"
    return Path(root)


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
    # the temporary keeps the format's ending (nibabel reads it) and at most 64 bytes of the name: a long input
    # name (~240 bytes) would otherwise make a temporary name over the file system's 255
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    short = path.name.encode()[:64].decode(errors="ignore")
    fd, tmp = tempfile.mkstemp(prefix=f".{short}.", suffix=f".part{suffix}", dir=path.parent)
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


def check_writable(folder: str | Path, what: str = "output folder") -> None:
    """Before any work: ``folder`` is a folder that takes a file, or can be made where its nearest existing
    parent takes one. Nothing is created (a refused command leaves nothing behind). One line naming it."""
    from seg.errors import UserError

    folder = Path(folder).absolute()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: {what} exists and is not a folder")
    probe = folder if folder.exists() else next((p for p in folder.parents if p.exists()), None)
    if probe is None or not probe.is_dir():
        raise UserError(f"{folder}: {what} cannot be created ({probe} is not a folder)")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".seg_write_test."):
            pass
    except OSError as e:
        verb = "is not writable" if probe == folder else f"cannot be created in {probe}"
        raise UserError(f"{folder}: {what} {verb} ({e.strerror or e})") from None


def drop_unused_run(run: str | Path) -> None:
    """A run refused before it wrote anything leaves no folder: the one Hydra made is removed while it holds
    only Hydra's own files (``.hydra/`` and the job's ``.log``), and the empty folders above it inside the
    working folder; a folder with anything else is kept."""
    run, here = Path(run).absolute(), Path.cwd()
    if not run.is_dir() or not all(p.name == ".hydra" or p.suffix == ".log" for p in run.iterdir()):
        return
    shutil.rmtree(run, ignore_errors=True)
    for parent in run.parents:  # and the folders above it in this folder left empty (outputs/train/runs)
        if here not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()


def check_run_root(argv: list[str], log_dir: str) -> None:
    """Before Hydra makes a composed command's run folder: the folder its ``hydra.run.dir`` (default under
    ``paths.log_dir``) starts in, up to its first interpolation, must take a folder (else Hydra's traceback)."""
    pattern = next((a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")), f"{log_dir}/${{x}}")
    head = pattern.split("${")[0]
    root = Path(head) if head.endswith("/") or "${" not in pattern else Path(head).parent
    check_writable(root if str(root) else ".", "output folder (hydra.run.dir, under paths.log_dir)")


def check_space(folder: str | Path, nbytes: int, what: str = "output folder") -> None:
    """Before any work: ``folder`` takes a file (:func:`check_writable`) and its file system has ``nbytes`` free,
    so a full disk stops the command in one line before, not a traceback after, the work."""
    from seg.errors import UserError

    check_writable(folder, what)
    folder = Path(folder).absolute()
    probe = folder if folder.exists() else next(p for p in folder.parents if p.exists())
    free = shutil.disk_usage(probe).free
    if free < nbytes:
        raise UserError(f"{folder}: needs up to {nbytes / 1e6:.0f} MB, its file system has {free / 1e6:.0f} MB free")


class FolderLock:
    """An exclusive lock on ``folder`` for one command (``fcntl.flock`` on a hidden file in it, released when
    the process ends, however it ends; the file removed when the command ends normally): a second run writing
    into the same folder stops at once, before it writes anything, instead of both reporting every case written
    while only one run's files survive."""

    def __init__(self, folder: str | Path, name: str = "seg") -> None:
        self.path = Path(folder) / f".{name}.lock"
        self._f = None

    def __enter__(self) -> FolderLock:
        import fcntl

        from seg.errors import UserError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # never through a link: a planted .lock symlink would have its target truncated
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            why = "a symbolic link (a lock file is never followed)" if self.path.is_symlink() else one_line(e)
            raise UserError(f"{self.path}: {why}: remove it and run again") from None
        self._f = os.fdopen(fd, "r+")
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._f.seek(0)
            holder = self._f.read().strip() or "another process"
            self._f.close()
            raise UserError(f"{self.path.parent}: in use by {holder}: one run at a time per output folder") from None
        try:  # the lock of a run that just ended (and removed its file) is no lock: the file must still be there
            same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(self._f.fileno()).st_ino
        except OSError:
            same = False
        if not same:
            self._f.close()
            raise UserError(f"{self.path.parent}: in use by another run (its lock changed): run again")
        self._f.seek(0)
        self._f.truncate()
        self._f.write(f"pid {os.getpid()}")
        self._f.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self._f is not None:
            try:  # removed while still held: no lock file stays behind in the user's output folder
                os.unlink(self.path)
            except OSError:
                pass
            self._f.close()
