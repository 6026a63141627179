"""The one I/O module every path of the project goes through: local files, buckets and TensorFlow's filesystems.

Three kinds of path:

- local (no scheme): plain `os` and builtins, so local runs keep their speed;
- `ram://...`: TensorFlow's in-memory filesystem, through `tf.io.gfile`;
- any other URL (`gs://bucket/dir`, `memory://...`, `s3://...`): fsspec, which picks the client by scheme
  (gcsfs for `gs://`). fsspec is chosen over `tf.io.gfile` for buckets because gcsfs honours
  `STORAGE_EMULATOR_HOST` (TensorFlow's own `gs://` filesystem cannot be pointed at a test server), reads many
  byte ranges of an object concurrently in one call (`read_ranges`), and needs no TensorFlow to import.
  Credentials and client options follow fsspec's usual rules (for gs://: application-default credentials, or
  `FSSPEC_GS_TOKEN`, `FSSPEC_GS_PROJECT`, ... environment variables).

An object store has no directories and no rename: `makedirs` is a no-op there, `isdir` means "some object has
this prefix", and `write_atomic` relies on one object put being atomic (readers see the old object or the new
one, never part of one). Code that publishes several files atomically writes them, then a small marker last.
"""
import builtins
import os
import posixpath
import shutil
import tempfile

_GFILE_SCHEMES = ("ram",)


def _scheme(path):
    path = os.fspath(path)
    return path.split("://", 1)[0] if "://" in path else ""


def is_remote(path):
    """True for a URL (`gs://...`, `ram://...`, ...), False for a local path."""
    return bool(_scheme(path))


def _is_gfile(path):
    return _scheme(path) in _GFILE_SCHEMES


def _fs(path):
    """(fsspec filesystem, path without its scheme). The listing cache is off: other processes (a resumed run,
    another host) write to the same bucket, and a stale listing would hide their files."""
    from fsspec.core import url_to_fs

    return url_to_fs(os.fspath(path), use_listings_cache=False)


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def join(*parts):
    """Join path components: `os.path.join` for local paths, '/' for URLs."""
    if parts and is_remote(parts[0]):
        return posixpath.join(*(os.fspath(p) for p in parts))
    return os.path.join(*parts)


def basename(path):
    path = os.fspath(path)
    return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(path)


def dirname(path):
    path = os.fspath(path)
    return posixpath.dirname(path.rstrip("/")) if is_remote(path) else os.path.dirname(path)


def abspath(path):
    """An absolute local path, or the URL unchanged."""
    return os.fspath(path) if is_remote(path) else os.path.abspath(path)


def exists(path):
    if not is_remote(path):
        return os.path.exists(path)
    if _is_gfile(path):
        return _gfile().exists(path)
    fs, p = _fs(path)
    return fs.exists(p)


def isdir(path):
    if not is_remote(path):
        return os.path.isdir(path)
    if _is_gfile(path):
        return _gfile().isdir(path)
    fs, p = _fs(path)
    return fs.isdir(p)


def makedirs(path):
    """Create a directory and its parents (nothing when it exists; nothing at all on an object store)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
    elif _is_gfile(path):
        _gfile().makedirs(path)
    else:
        fs, p = _fs(path)
        fs.makedirs(p, exist_ok=True)


def listdir(path):
    """Sorted names (not paths) of a directory's entries. FileNotFoundError when it is not a directory."""
    if not is_remote(path):
        return sorted(os.listdir(path))
    if _is_gfile(path):
        if not _gfile().isdir(path):
            raise FileNotFoundError(f"no such directory: {path}")
        return sorted(name.rstrip("/") for name in _gfile().listdir(path))
    fs, p = _fs(path)
    if not fs.isdir(p):
        raise FileNotFoundError(f"no such directory: {path}")
    return sorted(posixpath.basename(e.rstrip("/")) for e in fs.ls(p, detail=False) if e.rstrip("/") != p.rstrip("/"))


def glob(pattern):
    """Sorted paths matching a shell pattern, in the pattern's own form (URLs keep their scheme)."""
    if not is_remote(pattern):
        import glob as globlib

        return sorted(globlib.glob(pattern))
    if _is_gfile(pattern):
        return sorted(_gfile().glob(pattern))
    fs, p = _fs(pattern)
    return sorted(fs.unstrip_protocol(m) for m in fs.glob(p))


def remove(path):
    """Delete one file."""
    if not is_remote(path):
        os.remove(path)
    elif _is_gfile(path):
        _gfile().remove(path)
    else:
        fs, p = _fs(path)
        fs.rm_file(p)


def rmtree(path):
    """Delete a directory and everything under it (nothing when it does not exist)."""
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
    elif _is_gfile(path):
        if _gfile().exists(path):
            _gfile().rmtree(path)
    else:
        fs, p = _fs(path)
        if fs.exists(p):
            fs.rm(p, recursive=True)


def open(path, mode="rb"):  # noqa: A001 - the module's file-opening function, like `io.open`
    """A file object for "rb", "r", "wb" or "w" (a context manager). Writing creates the parent directories
    (as an object store would need none). A remote file being written is visible only once closed."""
    if mode not in ("rb", "r", "wb", "w"):
        raise ValueError(f"storage.open supports modes rb, r, wb and w, not {mode!r}")
    if "w" in mode and (not is_remote(path) or _is_gfile(path)):
        parent = dirname(path)
        if parent:
            makedirs(parent)
    if not is_remote(path):
        return builtins.open(path, mode) if "b" in mode else builtins.open(path, mode, encoding="utf-8")
    if _is_gfile(path):
        if "w" in mode and _gfile().exists(path):
            _gfile().remove(path)  # TensorFlow's ram:// filesystem appends to an existing file instead of truncating
        return _gfile().GFile(path, mode)
    fs, p = _fs(path)
    return fs.open(p, mode) if "b" in mode else fs.open(p, mode, encoding="utf-8")


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def read_text(path):
    with open(path, "r") as f:
        return f.read()


def write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


def size(path):
    """Size of a file in bytes."""
    if not is_remote(path):
        return os.path.getsize(path)
    if _is_gfile(path):
        return _gfile().stat(path).length
    fs, p = _fs(path)
    return fs.size(p)


def version(path):
    """Something that changes whenever the file is rewritten (size and modification time; an object store's
    own key: GCS's generation), for caches of remote files."""
    if not is_remote(path):
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns)
    if _is_gfile(path):
        st = _gfile().stat(path)
        return (st.length, st.mtime_nsec)
    fs, p = _fs(path)
    return fs.ukey(p)


def write_atomic(path, data):
    """Write a whole file so that readers see the old contents or the new, never a part. Local: a temporary
    file in the same directory, flushed to disk, then renamed over `path`. fsspec stores: one object put (atomic
    on object stores). `ram://`: a temporary file renamed over `path`."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    if not is_remote(path):
        with builtins.open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    elif _is_gfile(path):
        with open(tmp, "wb") as f:
            f.write(data)
        _gfile().rename(tmp, path, overwrite=True)
    else:
        fs, p = _fs(path)
        fs.pipe_file(p, data)


def read_ranges(path, ranges):
    """Bytes of each (offset, length) of one file, in order. Remote ranges are fetched concurrently (one
    request each, all in flight at once), which is what hides a bucket's per-request latency."""
    ranges = [(int(o), int(n)) for o, n in ranges]
    if not ranges:
        return []
    if not is_remote(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            return [os.pread(fd, n, o) for o, n in ranges]
        finally:
            os.close(fd)
    if _is_gfile(path):
        with _gfile().GFile(path, "rb") as f:
            out = []
            for o, n in ranges:
                f.seek(o)
                out.append(f.read(n))
            return out
    fs, p = _fs(path)
    return fetch_ranges([(p, o, n) for o, n in ranges], fs=fs)


def fetch_ranges(requests, fs=None):
    """Bytes of each (path, offset, length), possibly across several files of one remote store, all fetched
    concurrently. Paths may be URLs or, with `fs`, already stripped of their scheme."""
    if not requests:
        return []
    if fs is None and not (is_remote(requests[0][0]) and not _is_gfile(requests[0][0])):
        return [read_ranges(p, [(o, n)])[0] for p, o, n in requests]  # local files and tf.io.gfile: one by one
    if fs is None:
        fs = _fs(requests[0][0])[0]
        requests = [(_fs(p)[1], o, n) for p, o, n in requests]
    return fs.cat_ranges([p for p, _, _ in requests], [o for _, o, _ in requests],
                         [o + n for _, o, n in requests], on_error="raise")


def _upload_tree(local_dir, remote_dir, only=None):
    """Copy every file under `local_dir` to the same relative place under `remote_dir` (one put each); with
    `only`, just the relative paths it names. Returns the relative paths copied."""
    copied = []
    for root, _, files in os.walk(local_dir):
        for name in sorted(files):
            local = os.path.join(root, name)
            rel = os.path.relpath(local, local_dir)
            if only is not None and rel not in only:
                continue
            with builtins.open(local, "rb") as src, open(join(remote_dir, *rel.split(os.sep)), "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            copied.append(rel)
    return copied


class staged_dir:  # noqa: N801 - used like a function: `with storage.staged_dir(path) as local:`
    """A LOCAL directory for writers that only write local files (SavedModel, Keras `.weights.h5`/`.keras`,
    TensorBoard event files). For a local `path` it is `path` itself (created). For a remote one it is a
    temporary directory whose files are uploaded to `path` when the block ends without an exception, and on
    each `sync()` (files changed since the last upload only: TensorBoard's growing event files). Files already
    under a remote `path` are left alone; nothing is deleted there."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.local = None
        self._sent = {}

    def __enter__(self):
        if not is_remote(self.path):
            os.makedirs(self.path, exist_ok=True)
            self.local = self.path
        else:
            self.local = tempfile.mkdtemp(prefix="nfnet-stage-")
        return self.local

    def sync(self):
        """Upload the files written or grown since the last sync (remote paths; a no-op for local ones)."""
        if self.local is None or not is_remote(self.path):
            return []
        changed = set()
        for root, _, files in os.walk(self.local):
            for name in files:
                local = os.path.join(root, name)
                st = os.stat(local)
                rel = os.path.relpath(local, self.local)
                if self._sent.get(rel) != (st.st_size, st.st_mtime_ns):
                    changed.add(rel)
                    self._sent[rel] = (st.st_size, st.st_mtime_ns)
        return _upload_tree(self.local, self.path, only=changed) if changed else []

    def __exit__(self, exc_type, exc, tb):
        if is_remote(self.path):
            try:
                if exc_type is None:
                    self.sync()
            finally:
                shutil.rmtree(self.local, ignore_errors=True)
        return False


_FETCHED = []


def _fetch_area():
    if not _FETCHED:
        import atexit

        atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in _FETCHED])
    local = tempfile.mkdtemp(prefix="nfnet-fetch-")
    _FETCHED.append(local)
    return local


def fetch_file(path):
    """A local file holding the bytes of `path`: `path` itself when local, else a fresh temporary copy (removed
    when the process exits) for readers that need a local file (h5py, memory maps)."""
    if not is_remote(path):
        return os.fspath(path)
    local = os.path.join(_fetch_area(), basename(path))
    with open(path, "rb") as src, builtins.open(local, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    return local


def fetch_dir(path):
    """A local directory holding the files of `path`: `path` itself when local, else a fresh temporary copy
    (removed when the process exits)."""
    if not isdir(path):
        raise FileNotFoundError(f"no such directory: {path}")
    if not is_remote(path):
        return os.fspath(path)
    local = _fetch_area()
    _download_tree(os.fspath(path), local)
    return local


def _download_tree(remote_dir, local_dir):
    for name in listdir(remote_dir):
        src, dst = join(remote_dir, name), os.path.join(local_dir, name)
        if isdir(src):
            os.makedirs(dst, exist_ok=True)
            _download_tree(src, dst)
        else:
            with open(src, "rb") as fin, builtins.open(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 22)
