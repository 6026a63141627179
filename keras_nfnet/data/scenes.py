"""Compositional scenes for the synthetic corpus: objects of a kind, a texture and a place, labelled by a teacher
that reads the scene's composition.

A scene is a smooth random colour field with 1-3 objects. Each object has a kind (one of `KINDS`), a texture (one
of `TEXTURES`), a random colour pair, size and position; larger objects are drawn first, so smaller ones lie on
top. The label scores are a weighted sum of four random linear read-outs of the scene, from easy to hard to see:

    textures present | kinds present | (kind, texture) conjunctions | (kind of the largest object, kind of the
    second largest, direction from the first to the second)

so a small student can learn the texture and kind statistics, a larger one the conjunctions, and the arrangement
term (256 combinations, no shortcut through colour, size or position) keeps paying for capacity and data beyond
that. Colour, size and position are nuisances: they never enter the label.
"""
import numpy as np

KINDS = ("disc", "square", "diamond", "triangle", "ring", "cross", "bar", "frame")
TEXTURES = ("solid", "stripes-0", "stripes-45", "stripes-90", "stripes-135", "checker", "dots", "rings")
MAX_OBJECTS = 3
DIRECTIONS = 4  # right, below, left, above (quadrant of the angle from the largest object to the second)
# (name, width) of the feature groups, in the order of `scene_features`' columns.
FEATURE_GROUPS = (("texture", len(TEXTURES)), ("kind", len(KINDS)), ("kind_texture", len(KINDS) * len(TEXTURES)),
                  ("arrangement", len(KINDS) * len(KINDS) * DIRECTIONS))
_TEXTURE_PERIOD = 1 / 6  # of the image side: 5.3 px at 32 px (a stride-2 stem still resolves it)
# Weight of each feature group in the label scores: the easy groups weigh most, so a small student learns a useful
# part of the labels and each harder group adds what only more capacity (and data) can learn.
GROUP_SCALES = (1.0, 1.0, 0.7, 0.5)


def draw_layout(rng, n):
    """Random scene layouts: dict of [n, MAX_OBJECTS] arrays kind, texture, present, radius, cy, cx (fractions of
    the image side), colour and colour2 ([n, MAX_OBJECTS, 3]). Objects are sorted by decreasing radius."""
    count = 1 + rng.choice(3, size=n, p=[0.3, 0.4, 0.3])
    present = np.arange(MAX_OBJECTS)[None, :] < count[:, None]
    radius = np.sort(rng.uniform(0.15, 0.32, (n, MAX_OBJECTS)), axis=1)[:, ::-1]
    layout = dict(
        kind=rng.integers(0, len(KINDS), (n, MAX_OBJECTS)),
        texture=rng.integers(0, len(TEXTURES), (n, MAX_OBJECTS)),
        present=present,
        radius=np.ascontiguousarray(radius),
        cy=rng.uniform(0.2, 0.8, (n, MAX_OBJECTS)),
        cx=rng.uniform(0.2, 0.8, (n, MAX_OBJECTS)),
        colour=rng.uniform(0, 255, (n, MAX_OBJECTS, 3)),
        angle=rng.uniform(0, 2 * np.pi, (n, MAX_OBJECTS)),  # phase of the texture
    )
    layout["colour2"] = (layout["colour"] + 128.0) % 256.0  # the texture's second colour always contrasts
    return layout


def shape_mask(kind, u, v):
    """Boolean mask of shape `kind` (index into KINDS) over coordinates u, v in units of the object radius."""
    r2 = u * u + v * v
    box = np.maximum(np.abs(u), np.abs(v))
    masks = (
        r2 < 1.0,                                                            # disc
        box < 0.85,                                                          # square
        np.abs(u) + np.abs(v) < 1.15,                                        # diamond
        (v < 0.75) & (np.abs(u) < (v + 1.0) * 0.6),                          # triangle, apex up
        (r2 < 1.0) & (r2 > 0.3),                                             # ring
        ((np.abs(u) < 0.33) | (np.abs(v) < 0.33)) & (box < 1.0),             # cross
        (np.abs(u) < 1.0) & (np.abs(v) < 0.4),                               # bar
        (box < 0.95) & (box > 0.55),                                         # frame
    )
    return masks[kind]


def texture_mask(texture, y, x, cy, cx, phase):
    """True where texture `texture` (index into TEXTURES) shows its second colour; y, x in image-side units."""
    k = 2 * np.pi / _TEXTURE_PERIOD
    if texture == 0:
        return np.zeros(np.broadcast_shapes(y.shape, phase.shape), bool)
    if 1 <= texture <= 4:
        theta = (texture - 1) * np.pi / 4
        return np.sin(k * (x * np.cos(theta) + y * np.sin(theta)) + phase) > 0
    if texture == 5:
        return (np.sin(k * x / 1.4 + phase) > 0) ^ (np.sin(k * y / 1.4 + phase) > 0)
    if texture == 6:
        return np.sin(k * x / 1.4 + phase) * np.sin(k * y / 1.4 + phase) > 0.5
    return np.sin(k * np.sqrt((y - cy) ** 2 + (x - cx) ** 2) + phase) > 0  # rings around the object's centre


def render(layout, size, rng):
    """uint8 images [n, size, size, 3] of the layouts, on smooth random colour fields drawn from `rng`."""
    n = layout["kind"].shape[0]
    coarse = rng.normal(0, 1, (n, 4, 4, 3)).astype(np.float32)
    grid = np.linspace(0, 3, size)
    lo = np.minimum(np.floor(grid).astype(int), 2)
    interp = np.zeros((size, 4), np.float32)
    interp[np.arange(size), lo] = 1 - (grid - lo)
    interp[np.arange(size), lo + 1] = grid - lo
    img = 128 + 40 * np.einsum("yi,nijc,xj->nyxc", interp, coarse, interp)
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    y, x = yy[None], xx[None]
    for j in range(MAX_OBJECTS):
        cy, cx = layout["cy"][:, j, None, None], layout["cx"][:, j, None, None]
        r = layout["radius"][:, j, None, None]
        u, v = (x - cx) / r, (y - cy) / r
        shape = np.zeros((n, size, size), bool)
        second = np.zeros((n, size, size), bool)
        for kind in range(len(KINDS)):
            rows = layout["kind"][:, j] == kind
            shape[rows] = shape_mask(kind, u[rows], v[rows])
        phase = layout["angle"][:, j, None, None]
        for texture in range(len(TEXTURES)):
            rows = layout["texture"][:, j] == texture
            second[rows] = texture_mask(texture, y, x, cy[rows], cx[rows], phase[rows])
        shape &= layout["present"][:, j, None, None]
        colour = np.where(second[..., None], layout["colour2"][:, j, None, None, :], layout["colour"][:, j, None, None, :])
        img = np.where(shape[..., None], colour, img)
    return np.clip(img, 0, 255).astype(np.uint8)


def scene_features(layout):
    """The scene's composition as counts [n, sum of FEATURE_GROUPS widths] (float32)."""
    n = layout["kind"].shape[0]
    kinds, textures, present = layout["kind"], layout["texture"], layout["present"].astype(np.float32)
    nk, nt = len(KINDS), len(TEXTURES)
    rows = np.arange(n)[:, None]
    tex, kind = np.zeros((n, nt), np.float32), np.zeros((n, nk), np.float32)
    kt = np.zeros((n, nk * nt), np.float32)
    np.add.at(tex, (rows, textures), present)
    np.add.at(kind, (rows, kinds), present)
    np.add.at(kt, (rows, kinds * nt + textures), present)
    arrangement = np.zeros((n, nk * nk * DIRECTIONS), np.float32)
    dy = layout["cy"][:, 1] - layout["cy"][:, 0]
    dx = layout["cx"][:, 1] - layout["cx"][:, 0]
    direction = np.round(np.arctan2(dy, dx) / (np.pi / 2)).astype(int) % DIRECTIONS  # 0 right, 1 below, ...
    pair = (kinds[:, 0] * nk + kinds[:, 1]) * DIRECTIONS + direction
    arrangement[np.arange(n), pair] = present[:, 1]  # zero for a scene with one object
    return np.concatenate([tex, kind, kt, arrangement], axis=1)


class SceneTeacher:
    """Label scores of scenes: random Gaussian read-outs of each feature group, each group standardised over a
    calibration set and weighted by GROUP_SCALES, summed, standardised per class, scaled by teacher_scale and
    added to a Zipf log-prior."""

    def __init__(self, num_classes, seed, zipf_exponent=1.0, teacher_scale=3.0):
        rng = np.random.default_rng([seed, 0x5CE7E])
        self.weights = [rng.normal(0, 1, (width, num_classes)).astype(np.float32) for _, width in FEATURE_GROUPS]
        self.log_prior = (-zipf_exponent * np.log(np.arange(1, num_classes + 1))).astype(np.float32)
        self.teacher_scale = teacher_scale
        calib = scene_features(draw_layout(np.random.default_rng([seed, 0xCA11B]), 4096))
        groups = self._group_logits(calib)
        self.group_mu = [g.mean(0) for g in groups]
        self.group_sigma = [g.std(0) + 1e-6 for g in groups]
        raw = self._raw_logits(calib)
        self.mu, self.sigma = raw.mean(0), raw.std(0) + 1e-6

    def _group_logits(self, features):
        out, start = [], 0
        for (_, width), w in zip(FEATURE_GROUPS, self.weights):
            out.append(features[:, start:start + width] @ w)
            start += width
        return out

    def _raw_logits(self, features):
        groups = self._group_logits(features)
        return sum(scale * (g - m) / s
                   for scale, g, m, s in zip(GROUP_SCALES, groups, self.group_mu, self.group_sigma))

    def scores(self, features):
        return self.teacher_scale * (self._raw_logits(features) - self.mu) / self.sigma + self.log_prior
