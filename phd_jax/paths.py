"""Every file phd_jax reads or writes goes through here: local paths and `gs://` URLs alike.

A path is a string. A local one (`runs/x`, `~/data/*.txt`) behaves exactly as with `os` and
`open`; one with a scheme (`gs://bucket/run`) goes to `etils.epath`'s backend (gcsfs, from
`pip install "phd-jax[gcs]"`), which orbax and TFDS use too. Object stores differ from a disk:

- no directories: `makedirs` creates nothing, a "directory" exists while an object lies below it;
- no rename, no append: `write_atomic` writes one whole object (atomic on GCS), optionally only
  if none exists yet (`exclusive=True`: a generation precondition, so two writers cannot both
  win); append-only logs are written as segments (phd_jax.train.metrics);
- libraries that want a local file (safetensors, sentencepiece, tokenizer.json) get a copy in
  a temporary folder from `staged(path)`, removed afterwards.

    from phd_jax import paths
    paths.write_atomic("gs://b/run/config.json", text)
    with paths.staged("gs://b/hf-model") as local:   # a local folder with the same files
        ...
"""

from __future__ import annotations

import contextlib
import glob as _glob
import os
import shutil
import tempfile
from collections.abc import Iterator

from etils import epath


def is_remote(path) -> bool:
    """True for a URL with a scheme (`gs://...`), False for a local path."""
    return "://" in os.fspath(path)


def absolute(path) -> str:
    """A local path made absolute (`~` expanded), as `os.path.abspath` does; a URL as given,
    without a trailing slash (`os.path.abspath("gs://b/run")` would give `<cwd>/gs:/b/run`)."""
    path = os.fspath(path)
    if is_remote(path):
        scheme, _, rest = path.partition("://")
        return f"{scheme}://{rest.rstrip('/')}"
    return os.path.abspath(os.path.expanduser(path))


def as_path(path) -> epath.Path:
    """An `etils.epath.Path` (local: `~` expanded)."""
    path = os.fspath(path)
    return epath.Path(path if is_remote(path) else os.path.expanduser(path))


def _fs(path: str):
    """The fsspec filesystem of a URL (epath's, cached: gcsfs for gs://)."""
    from etils.epath import backend

    return backend.fsspec_backend.fs(path)


def _strip(path: str) -> str:
    return path.split("://", 1)[1] if "://" in path else path


def _url(path: str, like: str) -> str:
    """`bucket/key` (as fsspec lists it) as a URL with `like`'s scheme."""
    return path if "://" in path else f"{like.split('://', 1)[0]}://{path}"


def refresh(path) -> None:
    """Forget cached listings under `path` (gcsfs never expires them by itself): another process
    may have written there since."""
    path = os.fspath(path)
    if is_remote(path):
        _fs(path).invalidate_cache(_strip(path).rstrip("/"))


# ---- questions --------------------------------------------------------------------------------


def exists(path) -> bool:
    path = os.fspath(path)
    return as_path(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path) -> bool:
    """A local directory, or a prefix with objects below it."""
    path = os.fspath(path)
    return as_path(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path) -> bool:
    path = os.fspath(path)
    return as_path(path).is_file() if is_remote(path) else os.path.isfile(path)


def listdir(path) -> list[str]:
    """The names directly in a directory (or below a prefix), as `os.listdir`. Raises
    FileNotFoundError if there is none."""
    path = os.fspath(path)
    if not is_remote(path):
        return os.listdir(path)
    refresh(path)
    if not isdir(path):
        raise FileNotFoundError(f"no such directory: {path!r}")
    return [p.name for p in as_path(path).iterdir()]


def size_and_mtime(path) -> tuple[int, float]:
    """(bytes, modification time in seconds) of a file or object."""
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.getsize(path), os.path.getmtime(path)
    info = _fs(path).info(_strip(path))
    mtime = info.get("mtime") or info.get("updated") or info.get("generation") or 0
    if not isinstance(mtime, (int, float)):
        mtime = getattr(mtime, "timestamp", lambda: str(mtime))()
    return int(info.get("size") or 0), mtime


def glob(pattern) -> list[str]:
    """The files (not directories) that match `pattern`, sorted; `**` matches any depth, as
    `glob.glob(..., recursive=True)`. A local pattern has `~` expanded."""
    pattern = os.fspath(pattern)
    if not is_remote(pattern):
        return sorted(f for f in _glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(f))
    fs = _fs(pattern)
    fixed = _strip(pattern).split("*")[0].split("?")[0].split("[")[0]
    refresh(_url(fixed.rpartition("/")[0], pattern))
    found = fs.glob(_strip(pattern), detail=True)
    return sorted(_url(p, pattern) for p, info in found.items() if info.get("type") == "file")


# ---- reading ----------------------------------------------------------------------------------


def open_file(path, mode: str = "r", encoding: str | None = None):
    """`open(path, mode)` for a local path, the object's stream for a URL (`r`, `rb`, `w`, `wb`;
    no append on an object store)."""
    path = os.fspath(path)
    if not is_remote(path):
        return open(path, mode, encoding=encoding)
    if "a" in mode:
        raise ValueError(f"{path}: object stores cannot append (write segments, or the whole object)")
    if "b" in mode:
        return _fs(path).open(_strip(path), mode)
    return _fs(path).open(_strip(path), mode, encoding=encoding or "utf-8")  # text: universal newlines


def read_text(path) -> str:
    with open_file(path, "r", encoding="utf-8") as f:
        return f.read()


def read_bytes(path) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


# ---- writing ----------------------------------------------------------------------------------


def makedirs(path) -> None:
    """`os.makedirs(path, exist_ok=True)`; nothing on an object store (no directories there)."""
    path = os.fspath(path)
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def write_atomic(path, data: str | bytes, exclusive: bool = False, fsync: bool = False) -> None:
    """Replace `path` as a whole: readers see the old content or the new, never a part.

    Local: a temporary file `.NAME.tmp` beside it, then `os.replace` (`fsync=True` syncs it
    first). A URL: one object write, atomic on GCS. `exclusive=True` writes only if `path` does
    not exist yet (on GCS a precondition the server checks, ifGenerationMatch=0) and raises
    FileExistsError otherwise: a second writer cannot overwrite the first."""
    path = os.fspath(path)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if is_remote(path):
        fs = _fs(path)
        try:
            fs.pipe_file(_strip(path), raw, mode="create" if exclusive else "overwrite")
        except FileExistsError:
            raise
        except Exception as e:  # gcsfs: HttpError 412 (precondition failed) on an existing object
            if exclusive and ("412" in str(e) or "recondition" in str(e)):
                raise FileExistsError(f"{path} exists already (written by another process)") from None
            raise
        return
    folder, name = os.path.split(path)
    if exclusive and os.path.exists(path):
        raise FileExistsError(f"{path} exists already (written by another process)")
    tmp = os.path.join(folder, f".{name}.tmp")
    with open(tmp, "wb") as f:
        f.write(raw)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    if exclusive:
        try:
            os.link(tmp, path)  # fails if `path` appeared meanwhile
        finally:
            os.remove(tmp)
    else:
        os.replace(tmp, path)


def remove(path) -> None:
    """Delete one file or object."""
    path = os.fspath(path)
    if is_remote(path):
        as_path(path).unlink()
    else:
        os.remove(path)


def rmtree(path) -> None:
    """Delete a directory (every object below a prefix) and what it holds."""
    path = os.fspath(path)
    if is_remote(path):
        as_path(path).rmtree(missing_ok=True)
    else:
        shutil.rmtree(path)


def copy_to(local: str, url: str) -> None:
    """Upload a local file, or a folder's files recursively, to `url` (a folder URL for a folder)."""
    fs = _fs(url)
    if os.path.isdir(local):
        fs.put(local.rstrip("/") + "/", _strip(url).rstrip("/") + "/", recursive=True)
    else:
        fs.put_file(local, _strip(url))


# ---- libraries that need local files ----------------------------------------------------------


@contextlib.contextmanager
def staged(path, names=None) -> Iterator[str]:
    """A local path with `path`'s content: `path` itself when it is local; for a URL, a copy in
    a temporary folder (a file, or a folder's files: only `names` of them if given, a collection
    or a predicate on the name, missing ones skipped), deleted when the block ends."""
    path = os.fspath(path)
    if not is_remote(path):
        yield path
        return
    tmp = tempfile.mkdtemp(prefix="phd_jax-staged-")
    try:
        fs = _fs(path)
        refresh(path)
        src = _strip(path).rstrip("/")
        if isfile(path):
            local = os.path.join(tmp, os.path.basename(src))
            fs.get_file(src, local)
        else:
            local = os.path.join(tmp, os.path.basename(src) or "staged")
            os.makedirs(local)
            for name in listdir(path):
                if names is not None and not (names(name) if callable(names) else name in names):
                    continue
                if isfile(f"{path.rstrip('/')}/{name}"):
                    fs.get_file(f"{src}/{name}", os.path.join(local, name))
        yield local
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def shown(path) -> str:
    """`path` as printed for the user: a URL as is; a local path relative to the working
    directory when it lies under it (`runs/default`), else absolute."""
    path = os.fspath(path)
    if is_remote(path):
        return absolute(path)
    path = absolute(path)
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if rel == ".." or rel.startswith(".." + os.sep) else rel
