"""TFRecord framing, the per-shard record-offset index, and random access to records by index.

A TFRecord file is a sequence of `uint64 length | uint32 masked_crc32c(length) | payload | uint32
masked_crc32c(payload)` (little endian). One pass over the headers gives every record's (offset, length); the
index file stores those pairs so a reader can fetch record i of a shard with one positioned read (`os.pread`
locally, an HTTP range request on a bucket), and so a resumed pipeline never has to read (or skip through)
records it does not need.

Index file layout (`<shard>.index`): little-endian uint64 pairs `(offset, payload_length)`, one per record.
Id table (`<shard>.ids`, written since the id check was added; optional for older corpora): little-endian int64,
the `image/id` of each record in order. Reading record i checks that its Example carries ids[i], and opening a
shard checks the table's first and last id against the metadata, so a shard (with its index and id table) copied
over another, two shards swapped, or a duplicated index entry is an error instead of a silent change of the epoch.
"""
import os
import struct

import google_crc32c
import numpy as np

from keras_nfnet import storage

HEADER_BYTES = 12  # u64 length + u32 crc of the length
FOOTER_BYTES = 4  # u32 crc of the payload
FRAME_BYTES = HEADER_BYTES + FOOTER_BYTES
INDEX_SUFFIX = ".index"
IDS_SUFFIX = ".ids"
_MASK_DELTA = 0xA282EAD8


class CorruptRecordError(ValueError):
    """A record whose framing, checksum or contents is invalid, or a shard that does not match its index, id table
    or metadata; the message names the split, shard and record."""


# Why a record is bad: a short code (the key of the per-reason counts in logs, TensorBoard and result files).
REASONS = ("truncated", "index_mismatch", "crc", "not_example", "missing_feature", "label_out_of_range",
           "undecodable_image", "id_mismatch")


def masked_crc32c(data):
    """TFRecord's masked CRC-32C of `data` (bytes)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(payload):
    """The TFRecord bytes of one payload (what `tf.io.TFRecordWriter` writes for it)."""
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", masked_crc32c(length)) + payload + struct.pack("<I", masked_crc32c(payload))


def index_path(shard_path):
    return shard_path + INDEX_SUFFIX


def ids_path(shard_path):
    return shard_path + IDS_SUFFIX


def place(split, shard_name, record=None):
    """How messages name a place: "split train shard train-00001.tfrecord record 3" (no quotes: TensorFlow escapes
    them in the messages of its assertions)."""
    text = (f"split {split} " if split else "") + f"shard {shard_name}"
    return text if record is None else f"{text} record {record}"


def scan_shard(shard_path, check_crc=True, split=None):
    """Walk a shard's framing and return its index as an int64 array [n, 2] of (offset, payload_length).

    Raises CorruptRecordError naming the shard and record for a truncated file or a bad checksum.
    """
    pairs = []
    size = storage.size(shard_path)
    name = place(split, storage.basename(shard_path))
    with storage.open(shard_path, "rb") as f:
        offset = 0
        while offset < size:
            record = len(pairs)
            header = f.read(HEADER_BYTES)
            if len(header) < HEADER_BYTES:
                raise CorruptRecordError(f"{name} record {record}: truncated header at byte {offset}")
            (length,) = struct.unpack("<Q", header[:8])
            if check_crc and struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
                raise CorruptRecordError(f"{name} record {record}: length checksum mismatch at byte {offset}")
            if offset + FRAME_BYTES + length > size:
                raise CorruptRecordError(
                    f"{name} record {record}: truncated (needs {FRAME_BYTES + length} bytes at byte {offset}, "
                    f"file has {size})")
            if check_crc:
                payload = f.read(length)
                (crc,) = struct.unpack("<I", f.read(FOOTER_BYTES))
                if crc != masked_crc32c(payload):
                    raise CorruptRecordError(f"{name} record {record}: payload checksum mismatch (CRC-32C: the "
                                             "record's bytes changed)")
            else:
                f.seek(offset + FRAME_BYTES + length)
            pairs.append((offset, length))
            offset += FRAME_BYTES + length
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def write_index(shard_path, index):
    """Write `index` ([n, 2] offsets and lengths) beside the shard, atomically (write then rename)."""
    path = index_path(shard_path)
    storage.write_atomic(path, np.asarray(index, dtype="<u8").reshape(-1, 2).tobytes())
    return path


def write_ids(shard_path, ids):
    """Write the shard's id table (int64 per record) beside it, atomically."""
    path = ids_path(shard_path)
    storage.write_atomic(path, np.asarray(ids, dtype="<i8").reshape(-1).tobytes())
    return path


def read_ids(shard_path):
    """The shard's id table as int64 [n] (memory-mapped), or None when the corpus predates id tables."""
    path = ids_path(shard_path)
    if not storage.exists(path):
        return None
    local = _local_file(path)
    size = os.path.getsize(local)
    if size % 8:
        raise CorruptRecordError(f"id table {storage.basename(path)} is not a whole number of int64 ids "
                                 f"({size} bytes)")
    if size == 0:
        return np.zeros([0], np.int64)
    return np.memmap(local, dtype="<i8", mode="c", shape=(size // 8,))


def read_index(shard_path):
    """The shard's index as int64 [n, 2], memory-mapped (copy-on-write): nothing is read until it is used, so a
    host's memory does not grow with the corpus (16 bytes per record: 64 GB for 4e9 records).
    FileNotFoundError naming the missing index file."""
    path = index_path(shard_path)
    if not storage.exists(path):
        raise FileNotFoundError(f"record index {path} is missing (rebuild it with keras_nfnet.data.records.scan_shard)")
    local = _local_file(path)
    size = os.path.getsize(local)
    if size % 16:
        raise CorruptRecordError(f"record index {storage.basename(path)} is not a whole number of (offset, length) "
                                 f"pairs ({size} bytes)")
    if size == 0:
        return np.zeros([0, 2], np.int64)
    # Offsets and lengths are < 2**63, so the stored uint64 bits read as int64 unchanged.
    return np.memmap(local, dtype="<i8", mode="c", shape=(size // 16, 2))


_FETCHED = {}  # (remote path, version) -> local copy, so that each pipeline built in a process reuses one download


def _local_file(path):
    """`path` when local; for a remote index or id table, a local copy (downloaded once per process and object
    version, removed at exit), memory-mapped like a local one rather than held in memory."""
    if not storage.is_remote(path):
        return path
    key = (path, storage.version(path))
    if key not in _FETCHED:
        _FETCHED[key] = storage.fetch_file(path)
    return _FETCHED[key]


_CHECK_CHUNK = 1 << 20  # index entries checked per numpy pass (16 MB), so a huge shard needs no huge array


def check_index_against_file(shard_path, index, split=None):
    """Cheap consistency check of an index with its shard, reading only the index (no record): offsets start at 0,
    each record starts where the previous one's frame ends (strictly increasing, contiguous with the TFRecord
    framing: a duplicated, reordered, dropped or stale entry breaks this), and the last one ends exactly at the end
    of the file (a truncated or extended shard). About 10 ms per million records."""
    size = storage.size(shard_path)
    where = place(split, storage.basename(shard_path))
    end = 0  # where the next record must start
    for start in range(0, len(index), _CHECK_CHUNK):
        rows = np.asarray(index[start:start + _CHECK_CHUNK])
        offsets, lengths = rows[:, 0], rows[:, 1]
        starts = np.concatenate([[end], offsets[:-1] + lengths[:-1] + FRAME_BYTES])
        bad = np.flatnonzero((offsets != starts) | (lengths < 0))
        if bad.size:
            i = int(bad[0])
            raise CorruptRecordError(
                f"{where}: index entry {start + i} (offset {int(offsets[i])}, length {int(lengths[i])}) does not "
                f"follow the previous record, which ends at byte {int(starts[i])}: the index is not the shard's "
                f"framing (a duplicated, reordered or stale entry)")
        end = int(offsets[-1] + lengths[-1] + FRAME_BYTES)
    if end > size:
        raise CorruptRecordError(f"{where} is truncated: its index needs {end} bytes, the file has {size}")
    if end != size:
        raise CorruptRecordError(f"{where} does not match its index: the index covers {end} bytes, the file has "
                                 f"{size}")


class RecordReader:
    """Random access to the records of an ordered list of shards by global record number.

    Record numbers run over the shards in order (shard 0's records first). Each read checks the framing against
    the index and the payload CRC, so a corrupt or truncated record, or a stale index, is reported with its split,
    shard and record number instead of being parsed as garbage. `ids` (per-shard id tables, or None where a shard
    has none) gives the id each record must carry (`expected_ids`; the pipeline compares it with the parsed one).
    File descriptors are opened lazily per process. Remote shards (a bucket) are read with one concurrent batch of
    byte-range requests per `read_many` call.
    """

    def __init__(self, shard_paths, indexes=None, check_crc=True, max_open_files=256, ids=None, split=None):
        self.shard_paths = list(shard_paths)
        self.names = [storage.basename(p) for p in self.shard_paths]
        self.split = split
        # Per-shard [n, 2] (offset, payload_length) arrays; memory-mapped when read from disk.
        self.indexes = [read_index(p) if indexes is None else indexes[i] for i, p in enumerate(self.shard_paths)]
        self.ids = list(ids) if ids is not None else [None] * len(self.shard_paths)
        self.has_ids = all(table is not None for table in self.ids) and bool(self.ids)
        counts = np.array([len(ix) for ix in self.indexes], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self.num_records = int(self.starts[-1])
        self.check_crc = check_crc
        self.max_open_files = max_open_files  # a corpus may have more shards than the process may open files
        self._fds = {}
        self._pid = None
        self.remote = any(storage.is_remote(p) for p in self.shard_paths)
        self._sizes = [None] * len(self.shard_paths)  # remote shards' sizes, looked up once

    def locate(self, record):
        """Global record number -> (shard number, record number within the shard)."""
        shards, locals_ = self.locate_many(np.array([record]))
        return int(shards[0]), int(locals_[0])

    def locate_many(self, recs):
        """Global record numbers (int array) -> (shard numbers int32, record numbers within the shard int64)."""
        recs = np.asarray(recs, dtype=np.int64)
        shards = np.searchsorted(self.starts, recs, side="right") - 1
        return shards.astype(np.int32), recs - self.starts[shards]

    def where(self, record):
        shard, local = self.locate(record)
        return place(self.split, self.names[shard], local)

    def read(self, record):
        """The payload bytes of one record; CorruptRecordError naming split, shard and record if it is bad."""
        if not 0 <= record < self.num_records:
            raise IndexError(f"record {record} out of range [0, {self.num_records})")
        payloads, _ = self.read_many(np.array([record]), raise_errors=True)
        return payloads[0]

    def expected_ids(self, recs):
        """The id each of the global records `recs` must carry (int64 array); None without id tables."""
        if not self.has_ids:
            return None
        shards, locals_ = self.locate_many(recs)
        out = np.empty(len(shards), np.int64)
        for shard in np.unique(shards).tolist():
            sel = shards == shard
            out[sel] = self.ids[shard][locals_[sel]]
        return out

    def read_many(self, recs, raise_errors=True):
        """Payloads of global record numbers `recs` (int array), in order.

        Returns (payloads, errors): errors maps a position in `recs` to (reason code, message naming the record) of
        a bad record (its payload is b""); with raise_errors=True the first bad record raises instead. Lookups are
        vectorised; the loop (this is the pipeline's per-record Python cost) does only the pread and the checks.
        """
        recs = np.asarray(recs, dtype=np.int64)
        shards, offsets, lengths = self._lookup(recs)
        shards, offsets, lengths = shards.tolist(), offsets.tolist(), lengths.tolist()
        frames = self._fetch(shards, offsets, lengths) if self.remote else None
        payloads, errors = [], {}
        check, crc = self.check_crc, masked_crc32c
        if self._pid != os.getpid():  # a forked child must not share the parent's descriptors
            self._fds, self._pid = {}, os.getpid()
        fds = self._fds
        for i, (shard, offset, length) in enumerate(zip(shards, offsets, lengths)):
            if frames is not None:
                data = frames[i]
            else:
                fd = fds.get(shard)
                if fd is None:
                    if len(fds) >= self.max_open_files:  # close the longest-open descriptor
                        os.close(fds.pop(next(iter(fds))))
                    fd = fds[shard] = os.open(self.shard_paths[shard], os.O_RDONLY)
                data = os.pread(fd, length + FRAME_BYTES, offset)
            payload = data[HEADER_BYTES:HEADER_BYTES + length]
            # The length field is compared with the index's (a stale index), then the payload CRC.
            if (len(data) != length + FRAME_BYTES or int.from_bytes(data[:8], "little") != length
                    or (check and int.from_bytes(data[HEADER_BYTES + length:], "little") != crc(payload))):
                code, problem = self._problem(data, offset, length)
                message = f"{self.where(int(recs[i]))}: {problem}"
                if raise_errors:
                    raise CorruptRecordError(message)
                errors[i] = (code, message)
                payload = b""
            payloads.append(payload)
        return payloads, errors

    def _fetch(self, shards, offsets, lengths):
        """Frames of a remote batch: every range requested at once (one concurrent batch of HTTP range requests,
        so a step costs about one round trip, not one per record). A range past the end of an object comes back
        short (the truncation check reports it)."""
        sizes = self._sizes
        requests = []
        for shard, offset, length in zip(shards, offsets, lengths):
            if sizes[shard] is None:
                sizes[shard] = storage.size(self.shard_paths[shard])
            end = min(offset + length + FRAME_BYTES, sizes[shard])
            requests.append((self.shard_paths[shard], offset, max(end - offset, 0)))
        nonempty = [r for r in requests if r[2] > 0]
        got = iter(storage.fetch_ranges(nonempty))
        return [next(got) if r[2] > 0 else b"" for r in requests]

    def _lookup(self, recs):
        """(shards, offsets, payload lengths) of global record numbers: one index gather per shard touched."""
        shards, locals_ = self.locate_many(recs)
        offsets, lengths = np.empty(len(recs), np.int64), np.empty(len(recs), np.int64)
        order = np.argsort(shards, kind="stable")
        touched, first = np.unique(shards[order], return_index=True)
        for shard, sel in zip(touched.tolist(), np.split(order, first[1:])):
            rows = self.indexes[shard][locals_[sel]]
            offsets[sel], lengths[sel] = rows[:, 0], rows[:, 1]
        return shards, offsets, lengths

    @staticmethod
    def _problem(data, offset, length):
        """(reason code, text): why a record read by `read_many` failed its checks."""
        if len(data) != length + FRAME_BYTES:
            return "truncated", f"truncated (read {len(data)} of {length + FRAME_BYTES} bytes at byte {offset})"
        stored = int.from_bytes(data[:8], "little")
        if stored != length:
            return "index_mismatch", (f"index does not match shard (index length {length}, stored length {stored} "
                                      f"at byte {offset})")
        return "crc", "payload checksum mismatch (CRC-32C: the record's bytes changed)"

    def close(self):
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
