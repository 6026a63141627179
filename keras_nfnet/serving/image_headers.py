"""The size an encoded image's header declares, read without decoding anything: the server refuses an image over
its pixel limit before TensorFlow allocates memory for it.

The same rules as the SavedModel's own check (`keras_nfnet.export.declared_image_size`, written in TensorFlow ops
for the graph): JPEG frame header, PNG IHDR, BMP info header (|height|), every GIF frame (pixels summed over
frames). tests/test_export.py checks that the two agree.
"""

# Same values as keras_nfnet.export's (not imported: that module needs Keras, the server does not).
DEFAULT_MAX_IMAGE_PIXELS = 1 << 24
MAX_GIF_BLOCKS = 20000


def _u16be(data, i):
    return data[i] << 8 | data[i + 1]


def _jpeg_size(data):
    """(width, height) from the first frame header (SOFn) before any scan, walking markers as libjpeg does."""
    n, i = len(data), 2
    while i < n:
        while i < n and data[i] != 0xFF:  # libjpeg skips stray bytes before a marker (with a warning)
            i += 1
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return None
        marker = data[i]
        i += 1
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 7 > n:
                return None
            return _u16be(data, i + 5), _u16be(data, i + 3)
        if marker in (0xD9, 0xDA):  # end of image, or a scan before any frame header
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            continue
        if i + 2 > n:
            return None
        i += _u16be(data, i)
    return None


def _gif_size(data):
    """(largest frame width, height, pixels of all frames, too many blocks): TensorFlow decodes every frame."""
    n = len(data)

    def byte(p):
        return data[p] if p < n else 0

    def chain_end(p):  # skip data sub-blocks (size, bytes...) up to the 0 terminator
        while p < n and data[p]:
            p += data[p] + 1
        return min(p, n)

    def table_size(flags):
        return 3 * (2 << (flags & 7)) if flags & 0x80 else 0

    pos, total, max_w, max_h = 13 + table_size(byte(10)), 0, 0, 0
    for _ in range(MAX_GIF_BLOCKS):
        c = byte(pos)
        if pos >= n or c not in (0x21, 0x2C):
            return max_w, max_h, total, False
        if c == 0x21:
            pos = chain_end(pos + 2) + 1
        else:
            width, height = byte(pos + 5) | byte(pos + 6) << 8, byte(pos + 7) | byte(pos + 8) << 8
            total += width * height
            max_w, max_h = max(max_w, width), max(max_h, height)
            pos = chain_end(min(pos + 10 + table_size(byte(pos + 9)) + 1, n)) + 1
    return max_w, max_h, total, True


def declared_image_size(data):
    """(width, height, pixels, too_complex) that an encoded image's header declares, or None when `data` is not
    a JPEG, PNG, GIF or BMP file (or its header cannot be read). Reads headers only; decodes nothing."""
    if data[:3] == b"\xff\xd8\xff":
        size = _jpeg_size(data)
        return None if size is None else (size[0], size[1], size[0] * size[1], False)
    if data[:4] == b"\x89PNG":
        if len(data) < 24:
            return None
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return width, height, width * height, False
    if data[:4] == b"GIF8":
        return _gif_size(data)
    if data[:2] == b"BM":
        if len(data) < 26:
            return None
        width = abs(int.from_bytes(data[18:22], "little", signed=True))
        height = abs(int.from_bytes(data[22:26], "little", signed=True))
        return width, height, width * height, False
    return None
