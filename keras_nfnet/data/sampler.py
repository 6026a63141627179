"""Stateless exactly-once sampling: the only state is the global step.

The training stream is a sequence of example *positions* p = 0, 1, 2, ... Position p belongs to epoch p // N
(N = split size) and reads record perm(seed, epoch)[p % N], where perm is a pseudo-random permutation of [0, N)
that depends only on (seed, epoch). The global batch at step s holds positions [s * U, (s + 1) * U) with
U = global_batch_size / repeats (each position appears `repeats` times, for repeated augmentation). Host h of H
reads rows [h * B / H, (h + 1) * B / H) of that batch, so a global batch is the same whatever H is, and
rebuilding the stream at step s needs no state and reads no skipped record.

The permutation is our own (a Feistel network over 64-bit integers with cycle walking), not TensorFlow's
`index_shuffle`: it evaluates any single index in O(1) without materialising the permutation (JFT has ~4e9
examples), and the streams stay identical across TensorFlow versions.
"""
import functools

import numpy as np

_U64 = np.uint64
_ROUNDS = 6


def _mix64(x):
    """SplitMix64 finaliser on a uint64 array (numpy array arithmetic wraps silently)."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _mix64_int(x):
    """The same finaliser on a Python int (for the per-epoch keys)."""
    m = 0xFFFFFFFFFFFFFFFF
    x &= m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


@functools.lru_cache(maxsize=64)
def _round_keys(seed, epoch):
    base = _mix64_int(int(seed) ^ (_mix64_int(int(epoch)) + 1))
    return tuple(np.array([_mix64_int(base + (r + 1) * 0x9E3779B97F4A7C15)], dtype=_U64) for r in range(_ROUNDS))


def permute(indices, n, seed, epoch):
    """perm(seed, epoch)[indices]: a bijection of [0, n) applied elementwise to `indices` (int array)."""
    indices = np.asarray(indices, dtype=np.int64)
    if n <= 1:
        return np.zeros_like(indices)
    if np.any(indices < 0) or np.any(indices >= n):
        raise ValueError(f"indices must lie in [0, {n})")
    bits = max(2, int(n - 1).bit_length())
    bits += bits % 2  # balanced Feistel halves
    half = _U64(bits // 2)
    mask = _U64((1 << (bits // 2)) - 1)
    keys = _round_keys(seed, epoch)

    def encrypt(x):
        left, right = x >> half, x & mask
        for key in keys:
            left, right = right, left ^ (_mix64(right ^ key) & mask)
        return (left << half) | right

    # Cycle walking: the Feistel network permutes [0, 2^bits) (< 4n values); re-encrypt values outside [0, n)
    # until they land inside, which restricts it to a permutation of [0, n).
    y = encrypt(indices.astype(_U64))
    outside = y >= _U64(n)
    while np.any(outside):
        y[outside] = encrypt(y[outside])
        outside = y >= _U64(n)
    return y.astype(np.int64)


def check_batching(global_batch_size, num_hosts=1, repeats=1):
    """Validate batch arithmetic; returns the per-host batch size."""
    for name, value in (("global_batch_size", global_batch_size), ("num_hosts", num_hosts), ("repeats", repeats)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if global_batch_size % num_hosts:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by the number of input "
                         f"pipelines {num_hosts}")
    if global_batch_size % repeats:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by repeats {repeats}")
    return global_batch_size // num_hosts


class StepSampler:
    """Maps (step, host) to the positions, copies and records of that host's rows of the global batch."""

    def __init__(self, num_records, global_batch_size, seed, repeats=1, shuffle=True, num_hosts=1, host=0):
        if num_records < 1:
            raise ValueError(f"the split is empty (num_records={num_records})")
        self.local_batch_size = check_batching(global_batch_size, num_hosts, repeats)
        if not 0 <= host < num_hosts:
            raise ValueError(f"host {host} outside [0, {num_hosts})")
        self.num_records = int(num_records)
        self.global_batch_size = int(global_batch_size)
        self.unique_per_batch = self.global_batch_size // repeats
        self.repeats = int(repeats)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.num_hosts = int(num_hosts)
        self.host = int(host)

    def rows(self, step):
        """(global row numbers, positions, copy numbers) of this host's rows at `step`."""
        rows = np.arange(self.host * self.local_batch_size, (self.host + 1) * self.local_batch_size, dtype=np.int64)
        positions = int(step) * self.unique_per_batch + rows // self.repeats
        return rows, positions, rows % self.repeats

    def records(self, positions):
        """Record number of each position (int64 array)."""
        positions = np.asarray(positions, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.num_records)
        if not self.shuffle:
            return offsets
        out = np.empty_like(positions)
        for epoch in np.unique(epochs):  # a batch spans at most a few epochs
            sel = epochs == epoch
            out[sel] = permute(offsets[sel], self.num_records, self.seed, int(epoch))
        return out

    def epoch_of_step(self, step):
        return int(step) * self.unique_per_batch // self.num_records

    def steps_per_epoch(self):
        return self.num_records / self.unique_per_batch
