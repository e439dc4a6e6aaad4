"""Synthetic DTU-like scenes: an analytic SDF object on a table, ray-traced with numpy.

The scenes exist to test and benchmark the whole pipeline on data with known geometry that does
*not* come from our own splat renderer: a textured object with real geometric detail (grooves,
tori, smooth unions) sits on a finite table under a directional light, seen by ``N`` cameras laid
out in rows on the upper front part of a sphere, like DTU's robot arm positions.

Geometry is traced to float64 precision: sphere tracing on the object's signed distance function
until it changes sign along the ray, then false-position refinement of that bracket (hit points
have ``|SDF| < 1e-10`` object radii). Masks and depths therefore agree with
:meth:`SyntheticScene.sdf`; the one approximation is that a sliver the ray enters by less than
1e-4 radii (1% of a pixel at 200 px) may be stepped over.

Conventions (see :mod:`splatkit.data.cameras`): OpenCV camera axes, intrinsics in continuous pixel
coordinates with pixel centres at ``+0.5``. The world frame has ``+z`` up; the object's bounding
sphere is ``center``/``radius`` (written as DTU's ``scale_mat``).

Per view ``i`` the folder holds exactly the DTU IDR/NeuS layout:

* ``cameras_sphere.npz``: ``world_mat_i`` (top 3x4 = ``K_int @ [R|t]`` where ``K_int`` has pixel
  centres on integers, i.e. our principal point - 0.5), ``scale_mat_i`` (``diag(r, r, r, 1)`` plus
  the sphere centre: maps the unit sphere onto the object's bounding sphere) and ``camera_mat_i``
  (as in IDR's DTU files, the pixel -> [-1, 1] map ``[[2/W, 0, -1], [0, 2/H, -1], ...]``).
* ``image/{i:06d}.png`` 8-bit RGB, colour from 2x2 supersampling (averaged in linear light).
* ``mask/{i:03d}.png`` 0/255: 255 exactly where the ray through the pixel *centre* hits the object
  (the table is not part of the object). The centre ray is used, not sub-sample coverage, so that
  the mask is exactly the set of pixels whose depth lies on the object.
* ``depth/{i:06d}.npy`` float32 z-depth along the camera axis (world units) of the centre ray's
  first hit (object or table); 0 where it hits nothing.
* ``meta.json``: seed, object name, sizes, light direction, world bound, format version.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from splatkit.data.cameras import Cameras
from splatkit.errors import DataError

FORMAT_VERSION = 1

# World placement of the canonical scene (object inside the unit sphere at the origin). Deliberately
# not the identity so that readers' normalisation and depth scaling are exercised.
WORLD_RADIUS = 2.0
WORLD_CENTER = np.array([0.25, -0.5, 1.0])

# Camera rig, in units of the object's bounding radius (DTU: cameras ~3-4 radii from the object,
# in rows from steep to shallow elevation over a ~100 degree wide arc in front of the object).
CAMERA_DISTANCE = 3.4
ELEVATION_RANGE_DEG = (58.0, 18.0)  # top row, bottom row
AZIMUTH_HALF_SPAN_DEG = 50.0
FOCAL_PER_WIDTH = 1.35  # horizontal field of view ~41 degrees: the whole object plus some table
TABLE_RADIUS = 2.4

# Tracing tolerances (canonical units, object radius 1).
_MIN_STEP = 2e-4  # forced progress near the surface; hits are then bracketed by a sign change.
# A sliver the minimum step jumps over penetrates at most _MIN_STEP / 2 (the SDF is 1-Lipschitz):
# ~1% of a pixel footprint at 200 px. Every step advances by >= _MIN_STEP across at most the
# unit sphere's diameter, which bounds the march (rays left after it are crawled).
_MAX_MARCH = int(2.0 / _MIN_STEP) + 16
# The last few rays (grazing a surface, crawling at the minimum step) are finished by _crawl,
# which samples them densely in large batches: per-iteration overhead would dominate otherwise.
_TAIL_RAYS = 256
_TAIL_POINTS = 16384
_N_REFINE = 6  # false-position steps on brackets that are mostly ~_MIN_STEP wide (|SDF| < 1e-10)
_N_REFINE_SHADING = 2  # colour samples only: |SDF| < ~2e-5, a thousandth of a pixel
_BOUND_MARGIN = 0.03
# Lighting probes the SDF at most this far from the object: ambient occlusion up to _AO_REACH,
# soft shadows where hardness * f / t < 1 with shadow rays shorter than 2 (the unit sphere).
_AO_REACH = 0.13
_SHADOW_HARDNESS = 16.0
# Detailed parts are evaluated exactly within this distance of their bounding volume and replaced
# by the bound further out: exact wherever tracing, normals, AO or shadows look, and it exceeds
# every smooth-union radius (<= 0.1).
_DETAIL_PAD = max(_AO_REACH, 2.0 / _SHADOW_HARDNESS) + 0.01
_NORMAL_EPS = 2e-4

N_COMPOSITIONS = 5


# ------------------------------------------------------------------------------------------------
# SDF primitives on coordinate arrays (x, y, z), all the same shape.
# ------------------------------------------------------------------------------------------------
def _len3(x, y, z):
    return np.sqrt(x * x + y * y + z * z)


def _len2(x, y):
    return np.sqrt(x * x + y * y)  # np.hypot is ~15x slower and overflow safety is not needed here


def _sphere(x, y, z, c, r):
    return _len3(x - c[0], y - c[1], z - c[2]) - r


def _round_box(x, y, z, b, r):
    qx = np.abs(x) - (b[0] - r)
    qy = np.abs(y) - (b[1] - r)
    qz = np.abs(z) - (b[2] - r)
    outside = _len3(np.maximum(qx, 0), np.maximum(qy, 0), np.maximum(qz, 0))
    inside = np.minimum(np.maximum(np.maximum(qx, qy), qz), 0)
    return outside + inside - r


def _torus(u, v, w, R, r):
    """Torus around the ``w`` axis (u, v span its plane)."""
    q = _len2(u, v) - R
    return _len2(q, w) - r


def _capsule(x, y, z, a, b, r):
    ba = np.subtract(b, a, dtype=np.float64)
    pax, pay, paz = x - a[0], y - a[1], z - a[2]
    h = np.clip((pax * ba[0] + pay * ba[1] + paz * ba[2]) / float(ba @ ba), 0.0, 1.0)
    return _len3(pax - ba[0] * h, pay - ba[1] * h, paz - ba[2] * h) - r


def _cylinder(u, v, w, r, h, rounding=0.0):
    """Capped cylinder around the ``w`` axis, radius ``r``, half height ``h``, rounded edges."""
    return _cylinder_rho(_len2(u, v), w, r, h, rounding)


def _smin(a, b, k):
    """Polynomial smooth union (blend radius ``k``)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smax(a, b, k):
    return -_smin(-a, -b, k)


def _polar_repeat(x, y, n, phase=0.0, angle=None):
    """Fold the plane into one of ``n`` sectors around the z axis (centred on angle ``phase``).
    ``angle`` may pass a precomputed ``arctan2(y, x)``."""
    sector = 2 * np.pi / n
    a = np.arctan2(y, x) if angle is None else angle
    k = np.round((a - phase) / sector).astype(np.int64) % n
    # Rotate each point back by its sector's angle; cos/sin come from an n-entry table because
    # numpy's elementwise cos/sin are far slower than a gather.
    angles = phase + sector * np.arange(n)
    c, s = np.cos(angles)[k], np.sin(angles)[k]
    return c * x + s * y, c * y - s * x


def _cylinder_rho(rho, w, r, h, rounding=0.0):
    """:func:`_cylinder` from a precomputed distance to the axis."""
    du = rho - (r - rounding)
    dw = np.abs(w) - (h - rounding)
    return np.minimum(np.maximum(du, dw), 0) + _len2(np.maximum(du, 0), np.maximum(dw, 0)) - rounding


def _bounded(bound, detail, x, y, z):
    """``detail(x, y, z)`` where the cheap ``bound`` (a lower bound of its distance: the SDF of a
    volume enclosing the detailed part) is below _DETAIL_PAD, else ``bound``. Still a lower bound of
    the true distance everywhere, and exact near the surface, which is all tracing, normals, AO and
    soft shadows need (see _DETAIL_PAD)."""
    near = bound < _DETAIL_PAD
    if near.all():
        return detail(x, y, z)
    out = bound.copy()
    idx = np.nonzero(near)[0]
    if idx.size:
        out[idx] = detail(x[idx], y[idx], z[idx])
    return out


def _detail_near(f, bound, detail, x, y, z):
    """``detail(x, y, z, f)`` (adding or carving features that lie inside the volume whose SDF is
    ``bound``) only where ``bound < _DETAIL_PAD``. Elsewhere the features are at least ``bound`` away and
    cannot change the sign, so ``min(f, bound)`` is a valid distance bound with the right sign."""
    near = bound < _DETAIL_PAD
    if near.all():
        return detail(x, y, z, f)
    out = np.minimum(f, bound)
    idx = np.nonzero(near)[0]
    if idx.size:
        out[idx] = detail(x[idx], y[idx], z[idx], f[idx])
    return out


def _repeat_limited(u, spacing, k):
    """Offset of ``u`` from the nearest of the planes ``spacing * i``, ``|i| <= k``."""
    return u - spacing * np.clip(np.round(u / spacing), -k, k)


# ------------------------------------------------------------------------------------------------
# Compositions: each returns (name, sdf(x, y, z) in the object's local frame, ground height,
# (radius, top) of a vertical cylinder around the z axis enclosing the object up to its blends).
# All fit inside the unit sphere and contain the origin (the "object centre").
# ------------------------------------------------------------------------------------------------
def _grooved_box(rng):
    b = np.array([0.46, 0.36, 0.38]) * rng.uniform(0.93, 1.05, 3)
    zc, r = -0.12, 0.06
    kz, kx = int(rng.integers(2, 4)), int(rng.integers(2, 5))
    sz, sx = (b[2] - 0.1) / kz, (b[0] - 0.1) / kx
    groove_w, groove_depth = 0.016, 0.03
    boss_r = 0.1 + 0.05 * rng.random()

    def sdf(x, y, z):
        zl = z - zc
        box = _round_box(x, y, zl, b, r)
        grooves = np.minimum(np.abs(_repeat_limited(zl, sz, kz)), np.abs(_repeat_limited(x, sx, kx))) - groove_w
        carve = np.maximum(grooves, -(box + groove_depth))  # only a thin layer under the surface
        f = np.maximum(box, -carve)
        f = np.maximum(f, -_sphere(x, y, z, (0.0, 0.0, zc + b[2] + 0.17), 0.22))  # dish on top
        boss = _cylinder(x, zl, y + b[1], boss_r, 0.035, 0.01)  # embossed disc on the front
        return np.minimum(f, boss)

    return "grooved_box", sdf, zc - b[2] + 0.02, (math.hypot(b[0], b[1]), zc + b[2])


def _gyroscope(rng):
    zb, Rb, rb = -0.6, 0.42, 0.1
    zc = -0.02
    RA, rA = 0.46 * rng.uniform(0.95, 1.04), 0.065
    RB = RA * rng.uniform(0.78, 0.88)
    n_beads = int(rng.integers(12, 19))

    def sdf(x, y, z):
        base = _torus(x, y, z - zb, Rb, rb)
        beads = _bounded(_torus(x, y, z - zb - 0.09, Rb, 0.045),  # the ring the beads sit on
                         lambda x, y, z: _sphere(*_polar_repeat(x, y, n_beads), z, (Rb, 0.0, zb + 0.09), 0.045),
                         x, y, z)
        ring_a = _torus(x, z - zc, y, RA, rA)  # vertical ring in the x-z plane
        ring_b = _torus(y, z - zc, x, RB, rA)  # vertical ring in the y-z plane
        core = _sphere(x, y, z, (0.0, 0.0, zc), 0.17)
        post = _capsule(x, y, z, (0.0, 0.0, zb), (0.0, 0.0, zc + RA + 0.1), 0.045)
        knob = _sphere(x, y, z, (0.0, 0.0, zc + RA + 0.12), 0.07)
        f = _smin(base, ring_a, 0.05)
        f = np.minimum(f, beads)
        f = _smin(f, ring_b, 0.04)
        f = _smin(f, core, 0.06)
        f = _smin(f, post, 0.03)
        return _smin(f, knob, 0.03)

    return "gyroscope", sdf, zb - rb + 0.02, (max(Rb + rb, RA + rA), zc + RA + 0.19)


def _snowman(rng):
    s = rng.uniform(0.95, 1.03)
    c0, r0 = np.array([0.0, 0.0, -0.42]), 0.4 * s
    c1, r1 = np.array([0.0, 0.0, 0.18]), 0.29 * s
    c2, r2 = np.array([0.0, 0.0, 0.6]), 0.2
    arm_lift = rng.uniform(0.1, 0.3)

    def head_details(x, y, z, f):
        for side in (-1.0, 1.0):
            f = np.maximum(f, -_sphere(x, y, z, (side * 0.075, -0.185, 0.66), 0.035))  # eye sockets
        f = np.minimum(f, _capsule(x, y, z, (0.0, -0.15, 0.6), (0.0, -0.32, 0.57), 0.03))  # nose
        f = np.minimum(f, _cylinder(x, y, z - 0.765, 0.21, 0.012, 0.005))  # hat brim
        return np.minimum(f, _cylinder(x, y, z - 0.84, 0.13, 0.08, 0.015))  # hat crown

    def buttons(x, y, z, f):  # down the front of the middle ball
        for ang in (-0.35, 0.0, 0.35):
            f = np.minimum(f, _sphere(x, y, z, (0.0, -r1 * math.cos(ang), c1[2] + r1 * math.sin(ang)), 0.04))
        return f

    def sdf(x, y, z):
        f = _smin(_sphere(x, y, z, c0, r0), _sphere(x, y, z, c1, r1), 0.1)
        f = _smin(f, _sphere(x, y, z, c2, r2), 0.07)
        for side in (-1.0, 1.0):
            f = _smin(f, _capsule(x, y, z, (side * 0.2, 0.0, 0.26), (side * 0.55, 0.0, 0.26 + arm_lift), 0.035), 0.03)
        f = _detail_near(f, _sphere(x, y, z, (0.0, -0.05, 0.7), 0.4), head_details, x, y, z)
        return _detail_near(f, _sphere(x, y, z, (0.0, -0.28, 0.18), 0.16), buttons, x, y, z)

    return "snowman", sdf, c0[2] - r0 + 0.03, (0.585, 0.92)


def _bust(rng):
    head_r = 0.24 * rng.uniform(0.95, 1.05)
    n_hair = int(rng.integers(14, 22))

    def sdf(x, y, z):
        plinth = _cylinder(x, y, z + 0.66, 0.42, 0.09, 0.02)
        shoulders = _capsule(x, y, z, (-0.34, 0.0, -0.3), (0.34, 0.0, -0.3), 0.15)
        chest = _round_box(x, y, z + 0.42, (0.3, 0.15, 0.16), 0.08)
        f = _smin(_smin(shoulders, chest, 0.08), plinth, 0.05)
        f = _smin(f, _capsule(x, y, z, (0.0, 0.0, -0.2), (0.0, 0.0, 0.12), 0.1), 0.06)  # neck
        # The head (everything in it lies within 0.36 of (0, 0, 0.25)) is detailed only nearby.
        return _smin(f, _bounded(_sphere(x, y, z, (0.0, 0.0, 0.25), 0.36), head, x, y, z), 0.05)

    def head(x, y, z):
        head = _smin(_sphere(x, y, z, (0.0, 0.0, 0.3), head_r), _sphere(x, y, z, (0.0, -0.06, 0.17), 0.16), 0.08)
        head = _smin(head, _capsule(x, y, z, (0.0, -0.2, 0.33), (0.0, -0.27, 0.25), 0.035), 0.02)  # nose
        for side in (-1.0, 1.0):
            head = _smin(head, _sphere(x, y, z, (side * head_r, 0.0, 0.28), 0.055), 0.02)  # ears
            head = _smax(head, -_sphere(x, y, z, (side * 0.08, -0.23, 0.36), 0.045), 0.015)  # eyes
        # Hair: grooves around the vertical axis on the back and top of the head.
        hx, hy = _polar_repeat(x, y, n_hair, phase=np.pi / 2)
        hair = np.abs(hy) - 0.012
        on_back = np.maximum(np.maximum(hair, -(head + 0.02)), -(y - 0.02))
        return np.maximum(head, -on_back)

    return "bust", sdf, -0.75 + 0.02, (0.49, 0.3 + head_r)


def _gear_tower(rng):
    teeth = [int(rng.integers(16, 23)), int(rng.integers(11, 16)), int(rng.integers(8, 11))]
    radii = [0.5, 0.35, 0.22]
    heights = [-0.64, -0.4, -0.18]
    twist = rng.uniform(0, 2 * np.pi, 3)

    def gear(x, y, zl, rho, angle, n, rad, ph):
        disc = _cylinder_rho(rho, zl, rad, 0.07, 0.012)
        tx, ty = _polar_repeat(x, y, n, ph, angle)
        tooth = _round_box(tx - rad, ty, zl, (0.06, 0.55 * np.pi * rad / n, 0.07), 0.012)
        hx, hy = _polar_repeat(x, y, 6, ph, angle)
        hole = _len2(hx - 0.55 * rad, hy) - 0.16 * rad  # through the whole disc
        return np.maximum(np.minimum(disc, tooth), -hole)

    def sdf(x, y, z):
        rho = _len2(x, y)
        f = _cylinder_rho(rho, z, 0.07, 0.5)  # shaft from z=-0.5 to 0.5
        f = np.minimum(f, _sphere(x, y, z, (0.0, 0.0, 0.5), 0.11))
        angle = None
        gears = np.full(x.shape, np.inf)
        # The gears are far apart in z, so each is evaluated in detail only near its own disc
        # (as in _bounded, sharing the polar angle between them).
        for n, rad, zc, ph in zip(teeth, radii, heights, twist):
            zl = z - zc
            g = _cylinder_rho(rho, zl, rad + 0.07, 0.075)
            idx = np.nonzero(g < _DETAIL_PAD)[0]
            if idx.size:
                if angle is None:
                    angle = np.arctan2(y, x)
                g[idx] = gear(x[idx], y[idx], zl[idx], rho[idx], angle[idx], n, rad, ph)
            gears = np.minimum(gears, g)
        return _smin(f, gears, 0.02)

    return "gear_tower", sdf, -0.71 + 0.02, (radii[0] + 0.07, 0.61)


_BUILDERS = (_grooved_box, _gyroscope, _snowman, _bust, _gear_tower)
assert len(_BUILDERS) == N_COMPOSITIONS


# ------------------------------------------------------------------------------------------------
# Procedural textures (solid textures in the object's local frame, so they agree across views).
# ------------------------------------------------------------------------------------------------
class _ValueNoise:
    """Smooth 3D value noise in [0, 1] from a seeded lattice (deterministic, vectorised)."""

    def __init__(self, rng: np.random.Generator):
        self.perm = rng.permutation(256).astype(np.int64)
        self.values = rng.random(256)

    def __call__(self, x, y, z):
        fx, fy, fz = np.floor(x), np.floor(y), np.floor(z)
        ix, iy, iz = fx.astype(np.int64), fy.astype(np.int64), fz.astype(np.int64)
        tx, ty, tz = x - fx, y - fy, z - fz
        tx, ty, tz = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty), tz * tz * (3 - 2 * tz)
        p = self.perm

        def corner(dx, dy, dz):
            return self.values[p[(p[(p[(ix + dx) & 255] + iy + dy) & 255] + iz + dz) & 255]]

        x00 = corner(0, 0, 0) + tx * (corner(1, 0, 0) - corner(0, 0, 0))
        x10 = corner(0, 1, 0) + tx * (corner(1, 1, 0) - corner(0, 1, 0))
        x01 = corner(0, 0, 1) + tx * (corner(1, 0, 1) - corner(0, 0, 1))
        x11 = corner(0, 1, 1) + tx * (corner(1, 1, 1) - corner(0, 1, 1))
        y0 = x00 + ty * (x10 - x00)
        y1 = x01 + ty * (x11 - x01)
        return y0 + tz * (y1 - y0)

    def plane(self, x, y):
        """2D value noise (the z = 0 slice of another lattice): half the cost of the 3D one."""
        fx, fy = np.floor(x), np.floor(y)
        ix, iy = fx.astype(np.int64), fy.astype(np.int64)
        tx, ty = x - fx, y - fy
        tx, ty = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty)
        p = self.perm

        def corner(dx, dy):
            return self.values[p[(p[(ix + dx) & 255] + iy + dy) & 255]]

        c00, c10, c01, c11 = corner(0, 0), corner(1, 0), corner(0, 1), corner(1, 1)
        y0 = c00 + tx * (c10 - c00)
        y1 = c01 + tx * (c11 - c01)
        return y0 + ty * (y1 - y0)

    def fbm(self, x, y, z, octaves=3):
        total, amp, norm = 0.0, 0.5, 0.0
        for o in range(octaves):
            s = 2.0 ** o
            # Offsets decorrelate the octaves (they would otherwise share lattice points at 0).
            total = total + amp * self(x * s + 17.3 * o, y * s - 9.1 * o, z * s + 5.7 * o)
            norm += amp
            amp *= 0.5
        return total / norm


def _hsv_to_linear(h, s, v):
    """HSV (as sRGB) -> linear RGB, for picking palettes."""
    h = h % 1.0
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.asarray(rgb, dtype=np.float64) ** 2.2


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


@dataclass
class _Appearance:
    noise: _ValueNoise
    palette: np.ndarray  # [3, 3] linear RGB: two base colours and an accent
    pattern: str  # stripes | checker | marble | patches
    pattern_freq: float
    pattern_axis: np.ndarray
    speckle_freq: float
    table_color: np.ndarray
    specular: float
    shininess: float

    @classmethod
    def from_rng(cls, rng: np.random.Generator) -> "_Appearance":
        hue = rng.random()
        sat = rng.uniform(0.35, 0.7)
        palette = np.stack([
            _hsv_to_linear(hue, sat, rng.uniform(0.65, 0.85)),
            _hsv_to_linear(hue + rng.uniform(0.05, 0.15), sat * 0.8, rng.uniform(0.4, 0.6)),
            _hsv_to_linear(hue + 0.5 + rng.uniform(-0.15, 0.15), rng.uniform(0.5, 0.8), rng.uniform(0.75, 0.95)),
        ])
        axis = rng.normal(size=3)
        return cls(
            noise=_ValueNoise(rng),
            palette=palette,
            pattern=("stripes", "checker", "marble", "patches")[int(rng.integers(0, 4))],
            pattern_freq=rng.uniform(5.0, 9.0),
            pattern_axis=axis / np.linalg.norm(axis),
            speckle_freq=rng.uniform(28.0, 45.0),
            table_color=_hsv_to_linear(rng.uniform(0.05, 0.15), rng.uniform(0.05, 0.2), rng.uniform(0.5, 0.62)),
            specular=rng.uniform(0.08, 0.25),
            shininess=rng.uniform(20.0, 60.0),
        )

    def object_albedo(self, x, y, z) -> np.ndarray:
        n = self.noise
        low = n.fbm(2.5 * x + 3.1, 2.5 * y - 1.7, 2.5 * z + 0.4)
        base = self.palette[0] + _smoothstep(0.35, 0.65, low)[:, None] * (self.palette[1] - self.palette[0])
        f, a = self.pattern_freq, self.pattern_axis
        u = x * a[0] + y * a[1] + z * a[2]
        if self.pattern == "stripes":
            m = _smoothstep(0.3, 0.5, np.sin(2 * np.pi * f * u + 4.0 * low))
        elif self.pattern == "checker":
            parity = (np.floor(f * x) + np.floor(f * y) + np.floor(f * z)) % 2
            m = 0.85 * parity
        elif self.pattern == "marble":
            m = _smoothstep(0.75, 0.95, np.abs(np.sin(np.pi * f * u + 9.0 * n.fbm(3 * x, 3 * y, 3 * z, 4))))
        else:  # patches: sharp-edged blotches
            m = _smoothstep(0.52, 0.56, n.fbm(1.6 * f * x, 1.6 * f * y, 1.6 * f * z, 2))
        albedo = base + m[:, None] * (self.palette[2] - base)
        sf = self.speckle_freq
        speckle = 0.75 + 0.5 * n(sf * x + 41.0, sf * y, sf * z)
        return albedo * speckle[:, None]

    def table_albedo(self, x, y) -> np.ndarray:
        n = self.noise
        # Wood-like grain (noise stretched along x) plus a faint drawn grid: texture for matching,
        # lower contrast than the object.
        grain = 0.65 * n.plane(1.5 * x + 100.0, 22.0 * y) + 0.35 * n.plane(3.0 * x - 50.0, 44.0 * y)
        gx = np.abs(_repeat_limited(x, 0.25, 1000))
        gy = np.abs(_repeat_limited(y, 0.25, 1000))
        grid = 1.0 - 0.25 * _smoothstep(0.012, 0.004, np.minimum(gx, gy))
        shade = (0.8 + 0.35 * grain) * grid
        return self.table_color[None, :] * shade[:, None]


# ------------------------------------------------------------------------------------------------
# The scene description and the tracer.
# ------------------------------------------------------------------------------------------------
@dataclass
class _World:
    """The scene in canonical units: object inside the unit sphere at the origin, +z up, the table
    at ``ground_z``; the object's local frame is the canonical one turned by ``yaw`` about z."""

    name: str
    local_sdf: Callable
    ground_z: float  # canonical
    yaw: float
    appearance: _Appearance
    light_dir: np.ndarray  # canonical == world direction (no rotation between them), towards the light
    bound_radius: float  # the object lies in the vertical cylinder of this radius around z ...
    bound_top: float  # ... between ground_z and this height (and in the unit sphere)

    def local_xy(self, x, y):
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return c * x + s * y, -s * x + c * y

    def sdf(self, x, y, z):
        """Object SDF (canonical units). The object is cut flat where it meets the table."""
        lx, ly = self.local_xy(x, y)
        return np.maximum(self.local_sdf(lx, ly, z), self.ground_z - z)

    def sdf_with_table(self, x, y, z):
        return np.minimum(self.sdf(x, y, z), z - self.ground_z)


def _build_world(seed: int) -> _World:
    rng = np.random.default_rng(seed)
    builder = _BUILDERS[seed % N_COMPOSITIONS]
    name, local_sdf, ground_z, (radius, top) = builder(rng)
    yaw = float(rng.uniform(0, 2 * np.pi))
    appearance = _Appearance.from_rng(rng)
    # Light from the cameras' side of the object (the rig looks from -y), 35-60 degrees up.
    az = np.deg2rad(rng.uniform(-70.0, 70.0))
    el = np.deg2rad(rng.uniform(35.0, 60.0))
    light = np.array([math.cos(el) * math.sin(az), -math.cos(el) * math.cos(az), math.sin(el)])
    # The margin covers the bulge of smooth unions (at most a quarter of their blend radius).
    return _World(name, local_sdf, float(ground_z), yaw, appearance, light, radius + _BOUND_MARGIN, top + _BOUND_MARGIN)


def _sphere_interval(o, d, radius=1.0):
    """Entry/exit distances of rays with the origin-centred sphere; nan where they miss."""
    b = np.einsum("ij,ij->i", o, d)
    c = np.einsum("ij,ij->i", o, o) - radius * radius
    disc = b * b - c
    with np.errstate(invalid="ignore"):
        s = np.sqrt(disc)
    return -b - s, -b + s


def _bound_interval(world: "_World", o, d, pad: float = 0.0):
    """Where rays (unit ``d``) are inside the object's bounding cylinder, slab and unit sphere
    (all grown by ``pad``): ``(t0, t1)``, empty (t1 < t0) where they miss it. Tracing only there
    halves the work compared with the bounding sphere."""
    s0, s1 = _sphere_interval(o, d, 1.0 + pad)
    t0 = np.where(np.isfinite(s0), s0, np.inf)
    t1 = np.where(np.isfinite(s1), s1, -np.inf)
    # Vertical cylinder x^2 + y^2 < r^2.
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - (world.bound_radius + pad) ** 2
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        root = np.sqrt(np.maximum(disc, 0.0))
        c0, c1 = (-b - root) / a, (-b + root) / a
    vertical = a < 1e-12  # parallel to the axis: inside for all t or never
    c0 = np.where(vertical, np.where(c < 0, -np.inf, np.inf), np.where(disc >= 0, c0, np.inf))
    c1 = np.where(vertical, np.where(c < 0, np.inf, -np.inf), np.where(disc >= 0, c1, -np.inf))
    # Slab ground_z < z < top.
    with np.errstate(invalid="ignore", divide="ignore"):
        z0 = (world.ground_z - o[:, 2]) / d[:, 2]
        z1 = (world.bound_top + pad - o[:, 2]) / d[:, 2]
    flat = np.abs(d[:, 2]) < 1e-12
    inside_slab = (o[:, 2] > world.ground_z) & (o[:, 2] < world.bound_top + pad)
    zlo = np.where(flat, np.where(inside_slab, -np.inf, np.inf), np.minimum(z0, z1))
    zhi = np.where(flat, np.where(inside_slab, np.inf, -np.inf), np.maximum(z0, z1))
    t0 = np.maximum(np.maximum(t0, c0), np.maximum(zlo, 0.0))
    t1 = np.minimum(np.minimum(t1, c1), zhi)
    return t0, t1


def _eval(sdf, o, d, t):
    return sdf(o[:, 0] + t * d[:, 0], o[:, 1] + t * d[:, 1], o[:, 2] + t * d[:, 2])


def _trace(sdf, o, d, t_near, t_far, cone=None, n_refine=_N_REFINE):
    """First ``t`` in ``[t_near, t_far]`` where ``sdf`` turns negative along each ray; inf if none.

    Sphere tracing: a step of ``f`` never oversteps a surface because ``f`` bounds the distance
    to it. Near a surface the step is at least ``_MIN_STEP``, and the sign change that this may
    cause brackets the hit, which false position refines (``n_refine`` steps). Hits are therefore
    where the SDF changes sign along the ray.

    With ``cone`` (per ray: the largest ``|d' - d|`` of rays ``d'`` from the same origin that
    should profit), also returns ``(cover_lo, cover_hi)``: along every such ray the interval
    ``t in (cover_lo, cover_hi)`` is free of the object. (A point at ``t`` on ``d'`` is within
    ``|t - t_j| + t * cone`` of the march point ``t_j``, so the empty balls of radius ``f_j`` cover
    it; consecutive balls overlap while ``f_j >= 2 * cone * t_j``.)
    """
    n = len(d)
    t_hit = np.full(n, np.inf)
    act = np.nonzero(t_far > t_near)[0]
    oa, da, tf = o[act], d[act], t_far[act]
    t = t_near[act].copy()
    t_prev = t.copy()  # last point known to be outside, and its SDF value
    f_prev = np.full(len(act), np.inf)
    found_ids, found_lo, found_hi, found_flo, found_fhi = [], [], [], [], []
    if cone is not None:
        cover_lo, cover_hi = np.full(n, np.inf), np.full(n, -np.inf)
        alpha = cone[act]
        open_ = np.ones(len(act), bool)
    for it in range(_MAX_MARCH):
        if act.size <= _TAIL_RAYS:
            break
        f = _eval(sdf, oa, da, t)
        if cone is not None:
            if it == 0:
                cover_lo[act] = (t - f) / (1.0 - alpha)
            # A step shorter than f (the minimum step) would break the chain of overlapping balls.
            open_ &= f >= np.maximum(2.0 * alpha * t, _MIN_STEP)
            cover_hi[act[open_]] = (t[open_] + f[open_]) / (1.0 + alpha[open_])
        inside = f < 0
        if inside.any():
            found_ids.append(act[inside])
            found_lo.append(t_prev[inside])
            found_hi.append(t[inside])
            found_flo.append(f_prev[inside])
            found_fhi.append(f[inside])
        # A miss once the safe radius reaches the end; a longer minimum step is clamped to it.
        miss = t + f >= tf
        t_prev, f_prev = t, f
        t = np.minimum(t + np.maximum(f, _MIN_STEP), tf)
        keep = ~inside & ~miss
        if not keep.all():
            act, oa, da, tf = act[keep], oa[keep], da[keep], tf[keep]
            t, t_prev, f_prev = t[keep], t_prev[keep], f_prev[keep]
            if cone is not None:
                alpha, open_ = alpha[keep], open_[keep]
    found = (found_ids, found_lo, found_hi, found_flo, found_fhi)
    _crawl(sdf, act, oa, da, t, t_prev, f_prev, tf, found)
    if found_ids:
        _refine(sdf, o, d, found_ids, found_lo, found_hi, found_flo, found_fhi, t_hit, n_refine)
    return t_hit if cone is None else (t_hit, cover_lo, cover_hi)


def _crawl(sdf, act, o, d, t, t_prev, f_prev, tf, found) -> None:
    """Finish rays by sampling them ``_MIN_STEP`` apart, many samples per SDF call; appends
    brackets to ``found``. The same guarantee as the march: consecutive outside samples
    ``_MIN_STEP`` apart can only hide a sliver entered by less than ``_MIN_STEP / 2``."""
    while act.size:
        k = max(16, _TAIL_POINTS // act.size)
        ts = np.minimum(t[:, None] + _MIN_STEP * np.arange(k), tf[:, None])  # [m, k]
        p = o[:, None, :] + ts[..., None] * d[:, None, :]
        f = sdf(p[..., 0].ravel(), p[..., 1].ravel(), p[..., 2].ravel()).reshape(ts.shape)
        neg = f < 0
        reach = ts + f >= tf[:, None]  # the safe radius covers the rest of the interval
        first_neg = np.where(neg.any(axis=1), np.argmax(neg, axis=1), k)
        first_reach = np.where(reach.any(axis=1), np.argmax(reach, axis=1), k)
        hit = first_neg < first_reach
        if hit.any():
            rows = np.nonzero(hit)[0]
            c = first_neg[rows]
            before = np.maximum(c - 1, 0)
            found[0].append(act[rows])
            found[1].append(np.where(c > 0, ts[rows, before], t_prev[rows]))
            found[2].append(ts[rows, c])
            found[3].append(np.where(c > 0, f[rows, before], f_prev[rows]))
            found[4].append(f[rows, c])
        go = ~hit & (first_reach == k)
        act, o, d, tf = act[go], o[go], d[go], tf[go]
        t_prev, f_prev = ts[go, -1], f[go, -1]
        t = np.minimum(t_prev + np.maximum(f_prev, _MIN_STEP), tf)


def _refine(sdf, o, d, found_ids, found_lo, found_hi, found_flo, found_fhi, t_hit, n_refine):
    """Root of the SDF inside each bracket ``[lo, hi]`` found by the march; writes ``t_hit``."""
    ids = np.concatenate(found_ids)
    lo, hi = np.concatenate(found_lo), np.concatenate(found_hi)
    f_lo, f_hi = np.concatenate(found_flo), np.concatenate(found_fhi)
    o_h, d_h = o[ids], d[ids]
    # A ray that starts inside (f_prev = inf) has its hit at t_near.
    starts_inside = ~np.isfinite(f_lo)
    # Illinois false position: superlinear on smooth crossings, and the bracket always shrinks.
    side = np.zeros(len(ids), np.int8)  # which end moved last: -1 lo, +1 hi
    for _ in range(n_refine):
        with np.errstate(invalid="ignore", divide="ignore"):
            w = f_lo / (f_lo - f_hi)
        w = np.where(np.isfinite(w), np.clip(w, 0.01, 0.99), 0.5)  # stay strictly inside
        mid = lo + w * (hi - lo)
        fm = _eval(sdf, o_h, d_h, mid)
        neg = fm < 0
        # Halve the stale end's value when the same end moves twice (the Illinois rule).
        f_lo = np.where(neg & (side == 1), 0.5 * f_lo, f_lo)
        f_hi = np.where(~neg & (side == -1), 0.5 * f_hi, f_hi)
        hi, f_hi = np.where(neg, mid, hi), np.where(neg, fm, f_hi)
        lo, f_lo = np.where(neg, lo, mid), np.where(neg, f_lo, fm)
        side = np.where(neg, 1, -1).astype(np.int8)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = f_lo / (f_lo - f_hi)
    w = np.where(np.isfinite(w), np.clip(w, 0.0, 1.0), 0.5)
    th = lo + w * (hi - lo)
    th[starts_inside] = lo[starts_inside]
    t_hit[ids] = th


def _normals(sdf, p):
    """Unit SDF gradients by the tetrahedron rule (4 evaluations)."""
    e = _NORMAL_EPS
    ks = np.array([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], dtype=np.float64)
    g = np.zeros_like(p)
    for k in ks:
        g += k[None, :] * sdf(p[:, 0] + e * k[0], p[:, 1] + e * k[1], p[:, 2] + e * k[2])[:, None]
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)


def _ambient_occlusion(world: "_World", p, n):
    """Occlusion from the SDF probed at 5 heights along the normal (at most _AO_REACH away)."""
    ao = np.ones(len(p))
    # Only points that close to the object's bound can be occluded by it (the table does not
    # occlude along its own normal).
    rho2 = p[:, 0] ** 2 + p[:, 1] ** 2
    near = np.nonzero((rho2 < (world.bound_radius + _AO_REACH) ** 2) & (p[:, 2] < world.bound_top + _AO_REACH))[0]
    if near.size == 0:
        return ao
    pn, nn = p[near], n[near]
    occ = np.zeros(len(near))
    weight = 1.0
    for i in range(5):
        h = 0.01 + (_AO_REACH - 0.01) * i / 4
        q = pn + h * nn
        occ += (h - world.sdf_with_table(q[:, 0], q[:, 1], q[:, 2])) * weight
        weight *= 0.95
    ao[near] = np.clip(1.0 - 3.0 * occ, 0.0, 1.0)
    return ao


def _soft_shadow(world: "_World", p, light, hardness=_SHADOW_HARDNESS):
    """1 = fully lit; penumbra from the closest approach of the shadow ray to the object."""
    sdf = world.sdf
    m = len(p)
    res = np.ones(m)
    d = np.ascontiguousarray(np.broadcast_to(light, p.shape))
    # Penumbra needs hardness * f / t < 1, i.e. f < t / hardness: pad the bound accordingly.
    s0, s1 = _bound_interval(world, p, d, pad=2.0 / hardness)
    act = np.nonzero(s1 > np.maximum(s0, 0.0))[0]
    t = np.maximum(s0[act], 0.02)
    end = s1[act]
    pa = p[act]
    r = np.ones(len(act))
    for _ in range(64):
        if act.size == 0:
            break
        f = sdf(pa[:, 0] + t * light[0], pa[:, 1] + t * light[1], pa[:, 2] + t * light[2])
        r = np.minimum(r, hardness * f / t)
        t = t + np.clip(f, 0.01, 0.25)
        done = (f < 1e-4) | (t > end)
        if done.any():
            res[act[done]] = np.clip(r[done], 0.0, 1.0)
            keep = ~done
            act, t, end, pa, r = act[keep], t[keep], end[keep], pa[keep], r[keep]
    res[act] = np.clip(r, 0.0, 1.0)
    return res


def _studio_light(x, y):
    """Spot-like falloff away from the object: the table fades into the dark like DTU's."""
    return np.exp(-(x * x + y * y) / 2.6)


def _background(d):
    up = np.clip(0.5 + 0.8 * d[:, 2], 0.0, 1.0)
    return (0.002 + 0.016 * up * up)[:, None] * np.array([1.0, 1.0, 1.05])


# Backdrops: "dark" is DTU's (the lit table fading into a dark room); "white" is a capture masked
# to white (MonoSDF's DTU crops, product photos): the object alone, everything else pure white.
BACKDROPS = ("dark", "white")


@dataclass
class _Hits:
    t_obj: np.ndarray  # inf where the object is not hit
    t_table: np.ndarray  # inf where the table is not hit (or the object is in front)


def _intersect(world: _World, o, d, npx: Optional[int] = None) -> _Hits:
    """Object and table hits of unit rays. With ``npx``, rays ``npx:`` are groups of ``npx``
    sub-pixel rays sharing origins with the ``npx`` pixel-centre rays in front: the centre rays
    are traced first, and each sub-ray starts where its centre ray's empty cone ends. Sub-rays
    only feed colour, so their hits are refined less (|SDF| < ~2e-5 instead of 1e-10)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t_g = (world.ground_z - o[:, 2]) / d[:, 2]
    t_g = np.where((d[:, 2] < 0) & (t_g > 0), t_g, np.inf)
    # The object lies above the table (inside the bound's slab), so it is hit before the table.
    near, far = _bound_interval(world, o, d)
    if npx is None or len(d) == npx:
        t_obj = _trace(world.sdf, o, d, near, far)
    else:
        k = len(d) // npx - 1
        sub_d = d[npx:].reshape(k, npx, 3)
        cone = np.linalg.norm(sub_d - d[None, :npx], axis=2).max(axis=0)
        t_c, lo, hi = _trace(world.sdf, o[:npx], d[:npx], near[:npx], far[:npx], cone=cone)
        sub_near = near[npx:].reshape(k, npx)
        skip = (lo[None, :] <= sub_near) & (hi[None, :] > sub_near)
        sub_near = np.where(skip, hi[None, :], sub_near).reshape(-1)
        t_s = _trace(world.sdf, o[npx:], d[npx:], sub_near, far[npx:], n_refine=_N_REFINE_SHADING)
        t_obj = np.concatenate([t_c, t_s])
    ptab = o[:, :2] + t_g[:, None] * d[:, :2]
    with np.errstate(invalid="ignore"):
        on_table = np.isfinite(t_g) & (np.einsum("ij,ij->i", ptab, ptab) < TABLE_RADIUS ** 2)
    t_table = np.where(on_table & ~np.isfinite(t_obj), t_g, np.inf)
    return _Hits(t_obj, t_table)


def _light_terms(world: _World, p, n, on_object):
    """Soft shadow (0..1) and ambient occlusion (0..1) at surface points."""
    L = world.light_dir
    ndl = n @ L
    lit = np.nonzero(ndl > 0)[0]
    shadow = np.zeros(len(p))
    if lit.size:
        # Object points start the shadow ray slightly off the surface to avoid self-shadow acne.
        start = p[lit] + (2e-3 * on_object[lit])[:, None] * n[lit]
        shadow[lit] = _soft_shadow(world, start, L)
    return shadow, _ambient_occlusion(world, p, n)


def _shade_pixels(world: _World, o, d, hits: _Hits, npx: int, backdrop: str = "dark") -> np.ndarray:
    """Linear RGB radiance of the sub-sample rays ``npx:`` (4 per pixel, after the ``npx`` centre
    rays). Shadows and occlusion are smooth at the pixel scale, so sub-samples that hit the same
    kind of surface as their pixel's centre ray reuse its values (4x less shadow tracing); normals,
    textures and the specular term are per sub-sample."""
    app = world.appearance
    L = world.light_dir
    kind = np.where(np.isfinite(hits.t_obj), 1, np.where(np.isfinite(hits.t_table), 2, 0))
    t = np.minimum(hits.t_obj, hits.t_table)
    hit = np.nonzero(kind > 0)[0]
    p = o[hit] + t[hit, None] * d[hit]
    on_object = kind[hit] == 1
    n = np.zeros_like(p)
    n[:, 2] = 1.0  # the table
    if on_object.any():
        n[on_object] = _normals(world.sdf, p[on_object])
    # Lighting terms: centre rays first, then sub-samples whose centre saw another surface kind.
    shadow = np.full(len(kind), np.nan)
    ao = np.full(len(kind), np.nan)
    centre = hit < npx
    shadow[hit[centre]], ao[hit[centre]] = _light_terms(world, p[centre], n[centre], on_object[centre])
    sub = np.nonzero(~centre)[0]  # positions in ``hit``
    pix = (hit[sub] - npx) % npx
    same = kind[hit[sub]] == kind[pix]
    shadow[hit[sub[same]]], ao[hit[sub[same]]] = shadow[pix[same]], ao[pix[same]]
    own = sub[~same]
    shadow[hit[own]], ao[hit[own]] = _light_terms(world, p[own], n[own], on_object[own])

    out = _background(d[npx:]) if backdrop == "dark" else np.ones((len(d) - npx, 3))
    hs = hit[sub]  # sub-sample rays that hit something
    ps, ns, objs = p[sub], n[sub], on_object[sub]
    albedo = np.empty_like(ps)
    if objs.any():
        lx, ly = world.local_xy(ps[objs, 0], ps[objs, 1])
        albedo[objs] = app.object_albedo(lx, ly, ps[objs, 2])
    if (~objs).any():
        albedo[~objs] = app.table_albedo(ps[~objs, 0], ps[~objs, 1])
    sh, oc = shadow[hs], ao[hs]
    ndl = ns @ L
    h = L[None, :] - d[hs]
    h /= np.linalg.norm(h, axis=1, keepdims=True)
    spec_k = np.where(objs, app.specular, 0.03)
    spec = spec_k * np.clip(np.einsum("ij,ij->i", ns, h), 0, 1) ** app.shininess * sh * (ndl > 0)
    diffuse = np.clip(ndl, 0, None) * sh
    ambient = 0.22 * oc * (0.65 + 0.35 * ns[:, 2])  # more light from above than from below
    spot = _studio_light(ps[:, 0], ps[:, 1])
    out[hs - npx] = spot[:, None] * (albedo * (ambient + 1.1 * diffuse)[:, None] + spec[:, None])
    return out


def _to_srgb8(linear: np.ndarray) -> np.ndarray:
    c = np.clip(linear, 0.0, 1.0)
    srgb = np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1 / 2.4) - 0.055)
    return (srgb * 255.0 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Cameras.
# ------------------------------------------------------------------------------------------------
def _row_sizes(n_views: int) -> list[int]:
    """Views per row: rows at lower elevation are longer (a ring's length goes with cos(elev)).
    About 0.86 sqrt(N) rows, so every row's share is at least one view."""
    n_rows = min(max(1, int(round(math.sqrt(n_views) * 6 / 7))), n_views)
    w = np.cos(_row_elevations(n_rows))
    share = n_views * w / w.sum()
    sizes = np.floor(share).astype(int)
    order = np.argsort(-(share - sizes), kind="stable")
    sizes[order[: n_views - int(sizes.sum())]] += 1  # largest remainders get the leftover views
    return [int(s) for s in sizes if s > 0]


def _row_elevations(n_rows: int) -> np.ndarray:
    top, bottom = np.deg2rad(ELEVATION_RANGE_DEG)
    if n_rows == 1:
        return np.array([0.5 * (top + bottom)])
    return np.linspace(top, bottom, n_rows)


def _look_at(eye: np.ndarray, target: np.ndarray, up=np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """Camera-to-world (OpenCV axes: x right, y down, z forward)."""
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def dtu_like_cameras(n_views: int, width: int, height: int) -> Cameras:
    """``n_views`` cameras in the canonical frame (object in the unit sphere at the origin, +z up).

    Rows run from high to low elevation; within a row the views go left to right, then the next row
    comes back (a serpentine, like DTU's robot path). For 49 views the rows hold 6, 7, 8, 9, 9, 10
    views, so e.g. views 22, 25, 28 sit in the middle row at azimuths +37.5, 0, -37.5 degrees.
    The layout is the same for every seed (as DTU's is for every scan); the small aim and distance
    jitter (fixed) keeps optical axes from meeting in a single point.
    """
    if n_views < 1:
        raise DataError(f"need at least one view, got {n_views}")
    jitter = np.random.default_rng(20240611)
    sizes = _row_sizes(n_views)
    elevs = _row_elevations(len(sizes))
    half = np.deg2rad(AZIMUTH_HALF_SPAN_DEG)
    c2ws, Ks = [], []
    for r, (count, el) in enumerate(zip(sizes, elevs)):
        az = np.linspace(-half, half, count) if count > 1 else np.zeros(1)
        if r % 2 == 1:
            az = az[::-1]
        for a in az:
            dist = CAMERA_DISTANCE * (1.0 + 0.02 * jitter.uniform(-1, 1))
            eye = dist * np.array([math.cos(el) * math.sin(a), -math.cos(el) * math.cos(a), math.sin(el)])
            # Aim a little above the centre: tall objects keep their tops in the bottom rows.
            target = np.array([0.0, 0.0, 0.05]) + 0.04 * jitter.uniform(-1, 1, 3)
            c2ws.append(_look_at(eye, target))
            fx = FOCAL_PER_WIDTH * width * (1.0 + 0.004 * jitter.uniform(-1, 1))
            # DTU-like intrinsics: fy slightly different from fx, principal point off centre.
            Ks.append(np.array([[fx, 0.0, 0.513 * width], [0.0, fx * 0.997, 0.516 * height], [0.0, 0.0, 1.0]]))
    return Cameras(Ks=np.stack(Ks), camtoworlds=np.stack(c2ws), widths=width, heights=height)


def _to_world_cameras(canon: Cameras) -> Cameras:
    c2w = canon.camtoworlds.copy()
    c2w[:, :3, 3] = WORLD_RADIUS * c2w[:, :3, 3] + WORLD_CENTER
    return Cameras(canon.Ks.copy(), c2w, canon.widths.copy(), canon.heights.copy())


def _subpixel_rays(cams: Cameras, i: int, du: float, dv: float):
    """Rays through every pixel centre shifted by (du, dv) pixels (via the principal point, so the
    pixel convention stays the one of :meth:`Cameras.pixel_rays`)."""
    K = cams.Ks[i].copy()
    K[0, 2] -= du
    K[1, 2] -= dv
    shifted = Cameras(K[None], cams.camtoworlds[i:i + 1], cams.widths[i:i + 1], cams.heights[i:i + 1])
    o, d = shifted.pixel_rays(0)
    return o.reshape(-1, 3), d.reshape(-1, 3)


# ------------------------------------------------------------------------------------------------
# Public API.
# ------------------------------------------------------------------------------------------------
@dataclass
class SyntheticScene:
    """A rendered synthetic scene in the *world* frame (what the files on disk describe)."""

    seed: int
    object_name: str
    cameras: Cameras  # world frame, OpenCV axes, corner-origin intrinsics
    images: np.ndarray  # [N, H, W, 3] uint8 (exactly the PNG contents)
    masks: np.ndarray  # [N, H, W] bool: the pixel-centre ray hits the object
    depths: np.ndarray  # [N, H, W] float32 z-depth in world units, 0 = no surface
    center: np.ndarray  # [3] object bounding-sphere centre (world)
    radius: float  # its radius (world)
    light_dir: np.ndarray  # [3] unit vector towards the light (world)
    ground_height: float  # world z of the table
    _world: _World
    backdrop: str = "dark"  # one of BACKDROPS

    def __len__(self) -> int:
        return len(self.cameras)

    def _to_canon(self, points):
        return (np.asarray(points, dtype=np.float64) - self.center) / self.radius

    def sdf(self, points: np.ndarray) -> np.ndarray:
        """Signed distance (world units, a lower bound away from the surface) to the object."""
        pc = self._to_canon(points).reshape(-1, 3)
        f = self._world.sdf(pc[:, 0], pc[:, 1], pc[:, 2]) * self.radius
        return f.reshape(np.shape(points)[:-1])

    def raycast(self, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distances along unit world rays to the first object hit and to the table (inf if none)."""
        o = self._to_canon(origins).reshape(-1, 3)
        d = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
        d = d / np.linalg.norm(d, axis=1, keepdims=True)
        hits = _intersect(self._world, o, d)
        shape = np.shape(origins)[:-1]
        return (hits.t_obj * self.radius).reshape(shape), (hits.t_table * self.radius).reshape(shape)

    def idr_matrices(self) -> dict[str, np.ndarray]:
        """The ``cameras_sphere.npz`` contents (DTU IDR/NeuS convention)."""
        out = {}
        w2c = self.cameras.worldtocams()
        scale_mat = np.diag([self.radius, self.radius, self.radius, 1.0])
        scale_mat[:3, 3] = self.center
        for i in range(len(self)):
            K_int = self.cameras.Ks[i].copy()
            K_int[0, 2] -= 0.5  # IDR puts pixel centres on integers
            K_int[1, 2] -= 0.5
            # IDR's camera_mat is not K but the pixel -> [-1, 1] map, which records the image size.
            w, h = int(self.cameras.widths[i]), int(self.cameras.heights[i])
            cam = np.eye(4)
            cam[0, 0], cam[0, 2], cam[1, 1], cam[1, 2] = 2.0 / w, -1.0, 2.0 / h, -1.0
            world_mat = np.eye(4)
            world_mat[:3, :4] = K_int @ w2c[i, :3, :4]
            out[f"world_mat_{i}"] = world_mat
            out[f"scale_mat_{i}"] = scale_mat.copy()
            out[f"camera_mat_{i}"] = cam
        return out

    def meta(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "generator": "splatkit.data.synthetic",
            "seed": int(self.seed),
            "object": self.object_name,
            "width": int(self.cameras.widths[0]),
            "height": int(self.cameras.heights[0]),
            "n_views": len(self),
            "light_direction": [float(v) for v in self.light_dir],
            "world_center": [float(v) for v in self.center],
            "world_radius": float(self.radius),
            "ground_height": float(self.ground_height),
            "up": [0.0, 0.0, 1.0],
            "backdrop": self.backdrop,
            "depth": "float32 z-depth along the camera axis in world units; 0 where the ray hits nothing",
            "mask": "255 where the ray through the pixel centre hits the object (table excluded)",
        }

    def to_scene(self):
        """The :class:`~splatkit.data.scene.Scene` a reader makes of the written folder: world
        normalised by the bounding sphere (``scale_mat``), images in [0, 1], depths rescaled."""
        from splatkit.data.normalize import normalization_from_sphere
        from splatkit.data.scene import Scene

        norm = normalization_from_sphere(self.center, self.radius)
        return Scene(
            cameras=self.cameras.transformed(norm.matrix),
            images=[im.astype(np.float32) / 255.0 for im in self.images],
            names=[f"{i:06d}" for i in range(len(self))],
            ids=list(range(len(self))),
            masks=[m.astype(np.float32) for m in self.masks],
            depths=[(d * np.float32(norm.scale)).astype(np.float32) for d in self.depths],
            normalization=norm,
            source_format="synthetic",
        )


def _check_args(seed: int, width: int, height: int, n_views: int, backdrop: str = "dark") -> None:
    if backdrop not in BACKDROPS:
        raise DataError(f"backdrop must be one of {', '.join(BACKDROPS)}, got {backdrop!r}")
    if int(seed) != seed or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed}")
    if width < 8 or height < 8:
        raise DataError(f"image size must be at least 8x8, got {width}x{height}")
    if n_views < 1:
        raise DataError(f"need at least one view, got {n_views}")


def render_synthetic_scene(seed: int = 0, width: int = 200, height: int = 150, n_views: int = 49,
                           backdrop: str = "dark") -> SyntheticScene:
    """Ray-trace the scene for ``seed`` from ``n_views`` DTU-like cameras, in memory. With
    ``backdrop="white"`` the table is left out (no hits, no depth) and every ray that misses the
    object is pure white: the same object and cameras as the dark scene of that seed."""
    _check_args(seed, width, height, n_views, backdrop)
    world = _build_world(int(seed))
    canon = dtu_like_cameras(n_views, width, height)
    images = np.zeros((n_views, height, width, 3), np.uint8)
    masks = np.zeros((n_views, height, width), bool)
    depths = np.zeros((n_views, height, width), np.float32)
    offsets = ((0.0, 0.0), (-0.25, -0.25), (0.25, -0.25), (-0.25, 0.25), (0.25, 0.25))
    npx = width * height
    for i in range(n_views):
        rays = [_subpixel_rays(canon, i, du, dv) for du, dv in offsets]
        o = np.concatenate([r[0] for r in rays])
        d = np.concatenate([r[1] for r in rays])
        hits = _intersect(world, o, d, npx)
        if backdrop == "white":
            hits.t_table[:] = np.inf
        # Centre ray: mask and depth.
        t_c = np.minimum(hits.t_obj[:npx], hits.t_table[:npx])
        z_axis = canon.camtoworlds[i, :3, 2]
        z = np.where(np.isfinite(t_c), t_c * (d[:npx] @ z_axis), 0.0) * WORLD_RADIUS
        depths[i] = z.reshape(height, width).astype(np.float32)
        masks[i] = np.isfinite(hits.t_obj[:npx]).reshape(height, width)
        # 2x2 sub-samples: colour, averaged in linear light.
        radiance = _shade_pixels(world, o, d, hits, npx, backdrop)
        images[i] = _to_srgb8(radiance.reshape(4, height, width, 3).mean(axis=0))
    return SyntheticScene(
        seed=int(seed),
        object_name=world.name,
        cameras=_to_world_cameras(canon),
        images=images,
        masks=masks,
        depths=depths,
        center=WORLD_CENTER.copy(),
        radius=WORLD_RADIUS,
        light_dir=world.light_dir.copy(),
        ground_height=float(WORLD_CENTER[2] + WORLD_RADIUS * world.ground_z),
        _world=world,
        backdrop=backdrop,
    )


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez`` but byte-for-byte reproducible (fixed zip timestamps, sorted keys)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def write_scene_files(scene: SyntheticScene, folder: Path) -> None:
    """Write ``scene`` into an existing empty ``folder`` (DTU IDR layout, see the module doc)."""
    import imageio.v3 as iio

    for sub in ("image", "mask", "depth"):
        (folder / sub).mkdir()
    _write_npz(folder / "cameras_sphere.npz", scene.idr_matrices())
    for i in range(len(scene)):
        iio.imwrite(folder / "image" / f"{i:06d}.png", scene.images[i])
        iio.imwrite(folder / "mask" / f"{i:03d}.png", scene.masks[i].astype(np.uint8) * 255)
        np.save(folder / "depth" / f"{i:06d}.npy", scene.depths[i])
    from splatkit.data.depth_io import write_depth_kind

    write_depth_kind(folder / "depth", "metric")  # ray-traced ground truth, in world units
    (folder / "meta.json").write_text(json.dumps(scene.meta(), indent=2, sort_keys=True) + "\n")


def write_synthetic_scene(out: str | Path, seed: int = 0, width: int = 200, height: int = 150,
                          n_views: int = 49, backdrop: str = "dark") -> Path:
    """Render and write a synthetic DTU-like scene to ``out`` (absent or empty); returns ``out``.

    Files go to a temporary sibling folder that is renamed at the end, so an interrupted run never
    leaves a folder that looks like a complete scene.
    """
    out = Path(out)
    _check_args(seed, width, height, n_views, backdrop)

    def check_target():
        if out.exists() and not out.is_dir():
            raise DataError("output path exists and is not a folder", out)
        if out.is_dir() and any(out.iterdir()):
            raise DataError("output folder is not empty; choose a new folder", out)

    check_target()
    scene = render_synthetic_scene(seed, width, height, n_views, backdrop)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():  # left by an earlier crashed run of this same process id
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write_scene_files(scene, tmp)
        check_target()
        os.replace(tmp, out)  # atomic; replaces an empty folder on POSIX
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
