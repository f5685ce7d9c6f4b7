"""The ``cardiac-mr`` phantom: a short-axis bSSFP-like cine stack.

Labels follow ACDC (background 0, rv 1, myocardium 2, lv 3); papillary muscles belong to the
LV cavity. See :mod:`jointreg.data.phantoms` for how a phantom is built.
"""

from __future__ import annotations

import math

import numpy as np

from jointreg.data.phantoms.grid import Grid, deformed_coordinates
from jointreg.data.phantoms.noise import fine_texture, smooth_noise
from jointreg.data.phantoms.painting import Painter, blur_in_place, render
from jointreg.data.phantoms.shapes import ellipsoid, superellipse

# Tissue ids are positions in this tuple; the label map is a lookup of the tissue map.
CARDIAC_TISSUES: tuple[str, ...] = (
    "air", "lung", "fat", "muscle", "myocardium", "lv_blood", "papillary", "rv_blood", "rv_wall",
    "atrial_blood", "atrial_wall", "aorta", "liver", "marrow", "bone_cortex", "csf",
)
CARDIAC_LABELS = {"background": 0, "rv": 1, "myocardium": 2, "lv": 3}
CARDIAC_TISSUE_LABELS = {"rv_blood": "rv", "myocardium": "myocardium", "lv_blood": "lv", "papillary": "lv"}


def build_cardiac_mr(rng: np.random.Generator, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """bSSFP short-axis stack. Anatomical axes: X → image left-right, Y → anterior, Z → apex to base."""
    U = rng.uniform
    a = deformed_coordinates(
        rng, grid, rotation_deg=20.0, shift_mm=(10.0, 10.0, 4.0),
        warp_scale_mm=(45.0, 45.0, 40.0), warp_mm=(2.0, 4.0),
    )
    X, Y, Z = a.X, a.Y, a.Z
    paint = Painter(grid.shape, CARDIAC_TISSUES)
    fat_field = smooth_noise(rng, grid, (12.0, 12.0, 16.0))
    coarse_tex = smooth_noise(rng, grid, (10.0, 10.0, 16.0))
    bias_field = smooth_noise(rng, grid, 120.0)

    # --- chest: wall layers, the cavity filled with lung ---------------------------------------
    chest_cy = U(-45, -25)
    half_w, half_d = U(135, 165), U(100, 120)
    rho = np.maximum(superellipse(X, Y - chest_cy, half_w, half_d, 2.2), 1e-3)
    depth = np.hypot(X, Y - chest_cy) * (1.0 / rho - 1.0)
    body = rho < 1.0
    fat_t = U(8, 22)
    wall_t = fat_t + U(10, 18)
    cavity = body & (depth >= wall_t)
    paint.paint("fat", body)
    paint.paint("muscle", body & (depth >= fat_t))
    paint.paint("lung", cavity)

    # --- spine, back muscles, descending aorta --------------------------------------------------
    spine_x, spine_y = U(-10, 10), chest_cy - half_d + U(55, 65)
    vb_r = U(15, 19)
    for sign in (-1.0, 1.0):
        back = ((X - spine_x - sign * U(30, 40)) / U(28, 36)) ** 2 + ((Y - spine_y + vb_r + 10.0) / U(26, 32)) ** 2
        paint.paint("muscle", body & (back < 1.0))
    r_spine = np.hypot(X - spine_x, Y - spine_y)
    paint.paint("bone_cortex", r_spine < vb_r)
    paint.paint("marrow", r_spine < vb_r - 2.0)
    paint.paint("csf", np.hypot(X - spine_x, Y - spine_y + vb_r + 8.0) < U(6, 8))
    aorta_c = (spine_x + U(18, 28), spine_y + vb_r + U(4, 12))
    paint.paint("aorta", np.hypot(X - aorta_c[0], Y - aorta_c[1]) < U(9, 12))

    # --- left ventricle: nested half-ellipsoids, apex at z_apex ------------------------------
    z_apex = -grid.fov[2] / 2.0 + U(4, 14)
    length = U(66, 82)
    s = (Z - z_apex) / length                                  # 0 at the apex, 1 at the base
    lv_x, lv_y = U(5, 20), U(0, 15)
    cx = lv_x + U(-8, 8) * (1.0 - s)                           # the long axis is not quite
    cy = lv_y + U(-8, 8) * (1.0 - s)                           # perpendicular to the slices
    r_cav, thick = U(20, 28), U(7, 11)
    s_eq = U(0.65, 0.8)
    apex_gap = thick * 0.7 / length

    def profile(radius: float, s0: float) -> np.ndarray:
        # Prolate cap from s0 up to the equator, then a slight narrowing towards the base.
        rising = np.sqrt(np.clip(1.0 - ((s_eq - s) / (s_eq - s0)) ** 2, 0.0, 1.0))
        falling = 1.0 - 0.08 * np.clip((s - s_eq) / (1.0 - s_eq), 0.0, 1.0)
        return radius * np.where(s < s_eq, rising, falling) * (s >= s0)

    dx, dy = X - cx, Y - cy
    r = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    oval = 1.0 + U(0.0, 0.1) * np.cos(2.0 * (theta - U(0, np.pi)))
    rv_dir = math.radians(U(140, 175))                         # towards the septum and the RV
    wall_var = 1.0 + U(0.0, 0.15) * np.cos(theta - rv_dir - np.pi)  # lateral wall a bit thicker
    in_stack = (s >= 0.0) & (s <= 1.0)
    endo_r = profile(r_cav, apex_gap) * oval
    # The wall reaches its full thickness a little above the apex; below, the apex is solid muscle.
    epi_r = (profile(r_cav, 0.0) + thick * np.sqrt(np.clip(s / 0.15, 0.0, 1.0)) * wall_var) * oval
    epi = in_stack & (r < epi_r)
    cavity_lv = in_stack & (r < endo_r)
    # At the base the outflow tract breaks the ring; it belongs to the cavity (as in ACDC).
    lvot_dir = rv_dir - U(0.5, 1.0)
    lvot = epi & (s > U(0.88, 0.95)) & (np.cos(theta - lvot_dir) > math.cos(U(0.35, 0.6)))

    # --- right ventricle: an ellipse over the septal side, minus the LV = a crescent ----------
    rv_s0, rv_s1 = U(0.15, 0.3), U(1.0, 1.1)
    rv_size = np.sqrt(np.clip((s - rv_s0) / (0.6 - rv_s0), 0.0, 1.0)) * (s <= rv_s1)
    outer = r_cav + thick
    rv_off = outer * U(0.3, 0.6)
    along_c = (X - cx) * math.cos(rv_dir) + (Y - cy) * math.sin(rv_dir) - rv_off
    across = -(X - cx) * math.sin(rv_dir) + (Y - cy) * math.cos(rv_dir)
    rv_depth = (outer - rv_off + U(14, 24)) * np.maximum(rv_size, 1e-3)
    rv_span = outer * U(1.3, 1.7) * np.maximum(rv_size, 1e-3)
    rv_wall_t = U(3, 4.5)
    rv_e = (along_c / rv_depth) ** 2 + (across / rv_span) ** 2
    rv_outer = (rv_e < 1.0) & (rv_size > 0.05)
    rv_inner = ((along_c / (rv_depth - rv_wall_t)) ** 2 + (across / (rv_span - rv_wall_t)) ** 2 < 1.0) & (rv_size > 0.15)
    lv_epi_grown = in_stack & (r < epi_r + 1.5)

    # --- atria and aortic root above the base ------------------------------------------------
    la_level = (s > 0.97) & (s < 1.7)
    ra_level = (s > rv_s1) & (s < 1.7)
    la_c, la_r = (lv_x + U(-8, 8), lv_y - U(10, 20)), U(18, 25)
    ra_c = (lv_x + math.cos(rv_dir) * U(35, 50), lv_y + math.sin(rv_dir) * U(10, 30) - U(5, 15))
    ra_r = U(17, 24)
    la_dist = np.hypot(X - la_c[0], Y - la_c[1])
    ra_dist = np.hypot(X - ra_c[0], Y - ra_c[1])
    la, ra = la_level & (la_dist < la_r), ra_level & (ra_dist < ra_r)
    atrial_walls = (la_level & (la_dist < la_r + 2.5)) | (ra_level & (ra_dist < ra_r + 2.5))
    ao_root = (s > 0.95) & (s < 1.7) & (np.hypot(X - (lv_x - U(0, 10)), Y - (lv_y + U(15, 25))) < U(11, 15))

    # --- mediastinal and epicardial fat, liver under the apex ---------------------------------
    # A fat pad between the heart and the anterior chest wall; patchy fat in the grooves.
    front_pad = cavity & (depth < wall_t + U(10, 20)) & (np.abs(X - lv_x + 20.0) < U(50, 70)) & (Y > lv_y)
    paint.paint("fat", front_pad & (fat_field > U(-0.6, 0.0)))
    heart_zone = (in_stack & (r < epi_r + U(3, 6))) | (rv_e < 1.15**2) & (rv_size > 0.05) | la | ra | ao_root
    paint.paint("fat", cavity & heart_zone & (fat_field > U(0.0, 0.5)))
    liver_c = (lv_x - U(30, 50), lv_y - U(50, 70), z_apex - U(10, 30))
    liver = ellipsoid(a, liver_c, (U(80, 100), U(55, 70), U(50, 70))) < 1.0
    paint.paint("liver", cavity & liver & ~(in_stack & (r < epi_r)))

    # --- heart chambers, last so they win ------------------------------------------------------
    paint.paint("atrial_wall", atrial_walls)
    paint.paint("atrial_blood", la | ra)
    paint.paint("aorta", ao_root)
    paint.paint("rv_wall", rv_outer & ~lv_epi_grown)
    paint.paint("rv_blood", rv_inner & ~lv_epi_grown)
    paint.paint("myocardium", epi)
    paint.paint("lv_blood", cavity_lv | lvot)
    for angle in (rv_dir + np.pi + U(0.5, 0.9), rv_dir + np.pi - U(0.5, 0.9)):
        p_r, p_at = U(3.5, 5.5), U(0.55, 0.7)
        px, py = cx + np.cos(angle) * endo_r * p_at, cy + np.sin(angle) * endo_r * p_at
        papillary = cavity_lv & (s > 0.3) & (s < 0.85) & ((X - px) ** 2 + (Y - py) ** 2 < p_r**2)
        paint.paint("papillary", papillary)

    # --- intensities: bSSFP contrast, coil bias, Rician noise ----------------------------------
    scale = U(700, 1200)
    rel = {
        "air": 0.0, "lung": U(0.03, 0.07), "fat": U(0.75, 0.95), "muscle": U(0.22, 0.32),
        "myocardium": U(0.3, 0.45), "lv_blood": U(0.9, 1.05), "papillary": U(0.32, 0.45),
        "rv_blood": U(0.8, 1.0), "rv_wall": U(0.3, 0.45), "atrial_blood": U(0.8, 1.0),
        "atrial_wall": U(0.3, 0.45), "aorta": U(0.75, 0.95), "liver": U(0.3, 0.42),
        "marrow": U(0.4, 0.55), "bone_cortex": U(0.03, 0.08), "csf": U(0.8, 0.95),
    }
    mean = {k: v * scale for k, v in rel.items()}
    texture = {k: 0.04 * scale for k in ("lv_blood", "rv_blood", "atrial_blood", "fat", "liver", "muscle")}
    texture.update(myocardium=0.03 * scale, lung=0.02 * scale)
    coil_gain, bias_gain, sigma = U(0.1, 0.4), U(0.1, 0.3), scale * U(0.015, 0.04)
    # Only shape-dependent draws (white noise) from here on.
    signal = render(paint.tissue, CARDIAC_TISSUES, mean, texture, (coarse_tex, fine_texture(rng, grid.shape)))
    signal = np.maximum(signal, 0.0)
    blur_in_place(signal, grid, fwhm_mm=(2.0, 2.0, 4.0))
    coil = np.clip(1.0 + coil_gain * (Y / (grid.fov[1] / 2.0)), 0.3, None)   # anterior surface coil
    signal *= np.exp(bias_gain * bias_field) * coil
    real = signal + sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.rint(np.sqrt(real * real + imag * imag)).astype(np.float32), paint.tissue   # Rician
