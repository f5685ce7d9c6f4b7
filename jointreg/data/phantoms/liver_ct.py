"""The ``liver-ct`` phantom: axial portal-venous abdominal CT in Hounsfield units.

Labels follow CHAOS (background 0, liver 1, kidney_right 2, kidney_left 3, spleen 4);
intrahepatic vessels belong to the liver label, the IVC, aorta, gallbladder and renal sinus fat
do not. See :mod:`jointreg.data.phantoms` for how a phantom is built.
"""

from __future__ import annotations

import math

import numpy as np

from jointreg.data.phantoms.grid import Grid, deformed_coordinates
from jointreg.data.phantoms.noise import fine_texture, smooth_noise, smooth_noise_along_z
from jointreg.data.phantoms.painting import Painter, blur_in_place, paint_tube, render
from jointreg.data.phantoms.shapes import ellipsoid, frac, local_coordinates, rotation_matrix, superellipse

# Tissue ids are positions in this tuple; the label map is a lookup of the tissue map.
LIVER_TISSUES: tuple[str, ...] = (
    "air", "lung", "lung_vessel", "fat", "skin", "muscle", "bone_cortex", "bone_cancellous", "disc",
    "csf", "liver", "liver_vessel", "gallbladder", "kidney_right_cortex", "kidney_right_medulla",
    "kidney_left_cortex", "kidney_left_medulla", "spleen", "aorta", "ivc", "heart_muscle",
    "heart_blood", "stomach_wall", "stomach_content", "bowel", "gas", "portal_vein",
)
LIVER_LABELS = {"background": 0, "liver": 1, "kidney_right": 2, "kidney_left": 3, "spleen": 4}
LIVER_TISSUE_LABELS = {
    "liver": "liver", "liver_vessel": "liver",
    "kidney_right_cortex": "kidney_right", "kidney_right_medulla": "kidney_right",
    "kidney_left_cortex": "kidney_left", "kidney_left_medulla": "kidney_left",
    "spleen": "spleen",
}


def build_liver_ct(rng: np.random.Generator, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Portal-venous abdominal CT (HU). Anatomical axes: X → patient left, Y → anterior, Z → superior."""
    U = rng.uniform
    a = deformed_coordinates(
        rng, grid, rotation_deg=8.0, shift_mm=(10.0, 8.0, 10.0),
        warp_scale_mm=(70.0, 70.0, 55.0), warp_mm=(5.0, 9.0),
    )
    X, Y, Z = a.X, a.Y, a.Z
    paint = Painter(grid.shape, LIVER_TISSUES)
    # Random fields drawn up front; none of their sizes depends on the grid shape.
    fat_var = smooth_noise(rng, grid, 80.0)
    bowel_field = smooth_noise(rng, grid, (12.0, 12.0, 16.0))
    gas_field = smooth_noise(rng, grid, 9.0)
    # Where two independent smooth fields both cross zero lies a network of winding tubes
    # (vessels in the liver; the same fields serve the lungs, which never overlap the liver).
    vessel_a = smooth_noise(rng, grid, (30.0, 30.0, 36.0))
    vessel_b = smooth_noise(rng, grid, (30.0, 30.0, 36.0))
    coarse_tex = smooth_noise(rng, grid, (14.0, 14.0, 18.0))
    bias_field = smooth_noise(rng, grid, 150.0)
    course_x = smooth_noise_along_z(rng, grid, 60.0)  # the spine and great vessels meander
    course_y = smooth_noise_along_z(rng, grid, 60.0)

    # --- body wall: skin, subcutaneous fat, muscle; the cavity inside -------------------------
    half_w, half_d, body_cy = U(138, 162), U(95, 116), U(-8, 6)
    half_w_z = half_w * (1.0 + U(-0.06, 0.06) * Z / 100.0)
    rho = np.maximum(superellipse(X, Y - body_cy, half_w_z, half_d, U(2.2, 2.8)), 1e-3)
    depth = np.hypot(X, Y - body_cy) * (1.0 / rho - 1.0)  # ~distance under the skin, mm
    body = rho < 1.0
    fat_t = U(10, 28) * (1.0 + 0.35 * fat_var)
    wall_t = fat_t + U(8, 14)
    cavity = body & (depth >= wall_t)
    paint.paint("skin", body)
    paint.paint("fat", body & (depth >= 2.5))
    paint.paint("muscle", body & (depth >= fat_t))
    paint.paint("fat", cavity)

    # --- spine position (needed by several organs) -------------------------------------------
    spine_x = 4.0 * course_x
    spine_y = body_cy - half_d + U(62, 74) + 3.0 * course_y
    spine_at = (float(spine_x.mean()), float(spine_y.mean()))
    vb_r = U(16, 21)
    front_of_spine = spine_y + vb_r

    # --- diaphragm: two domes; the thorax is above, the abdomen below ------------------------
    dome_z = U(62, 84)
    # Dome tops lie anterior of centre, so the lungs reach lowest at the back (costophrenic recess).
    dome_r = (-U(50, 72), body_cy + U(5, 25), dome_z, U(85, 115))
    dome_l = (U(45, 70), body_cy + U(0, 20), dome_z - U(8, 24), U(85, 115))
    diaphragm = np.maximum(
        dome_r[2] - ((X - dome_r[0]) ** 2 + (Y - dome_r[1]) ** 2) / (2.0 * dome_r[3]),
        dome_l[2] - ((X - dome_l[0]) ** 2 + (Y - dome_l[1]) ** 2) / (2.0 * dome_l[3]),
    )
    thorax = cavity & (Z > diaphragm)
    abdomen = cavity & ~thorax
    paint.paint("lung", thorax)
    paint.paint("lung_vessel", thorax & (np.abs(vessel_a) < 0.05) & (np.abs(vessel_b) < 0.05))
    paint.paint("fat", thorax & (np.abs(X - spine_x) < U(22, 32)) & (Y > spine_y))  # mediastinum
    heart_c = (spine_at[0] + U(20, 40), body_cy + U(25, 45), dome_l[2] + U(20, 35))
    heart_radii = (U(45, 56), U(34, 42), U(40, 52))
    box, sub = a.crop(heart_c, max(heart_radii) * 1.1)
    heart = ellipsoid(sub, heart_c, heart_radii, rotation_matrix(yaw=math.radians(U(-35, -15))))
    paint.paint("fat", thorax[box] & (heart < 1.1**2), box)
    paint.paint("heart_muscle", thorax[box] & (heart < 1.0), box)
    paint.paint("heart_blood", thorax[box] & (heart < 0.72**2), box)

    # --- bowel loops with gas in the lower abdomen --------------------------------------------
    bowel = abdomen & (Z < dome_z - U(55, 75)) & (bowel_field > U(-0.1, 0.35))
    paint.paint("bowel", bowel)
    paint.paint("gas", bowel & (gas_field > U(1.1, 1.5)))

    # --- stomach: left upper quadrant, gas rising anteriorly (patient supine) ------------------
    st_c = (U(35, 60), body_cy + U(10, 30), dome_l[2] - U(35, 55))
    st_radii = (U(32, 46), U(26, 36), U(40, 60))
    st_rot = rotation_matrix(yaw=math.radians(U(-30, 10)), roll=math.radians(U(-15, 15)))
    box, sub = a.crop(st_c, max(st_radii))
    stomach = ellipsoid(sub, st_c, st_radii, st_rot)
    lumen = abdomen[box] & (ellipsoid(sub, st_c, [r - 4.0 for r in st_radii], st_rot) < 1.0)
    paint.paint("stomach_wall", abdomen[box] & (stomach < 1.0), box)
    paint.paint("stomach_content", lumen, box)
    paint.paint("gas", lumen & (sub.Y > st_c[1] + st_radii[1] * U(0.2, 0.7)), box)

    # --- liver: right lobe + left lobe, capped by the right dome --------------------------------
    height = U(135, 175)
    t = (dome_z - Z) / height                       # 0 at the dome, 1 at the tip
    t_max = U(0.22, 0.34)                            # level of the widest cross-section
    taper = (1.0 - np.clip((t - t_max) / (1.0 - t_max), 0.0, 1.0)) ** U(0.55, 0.85)
    rl_cx = dome_r[0] - U(5, 30) * t                 # the right lobe drifts laterally...
    rl_cy = dome_r[1] + U(0, 25) * t - U(0, 10)      # ...and forwards on its way down
    right_lobe = superellipse(
        X - rl_cx, Y - rl_cy, U(78, 98) * taper, U(68, 86) * (0.35 + 0.65 * taper), U(2.0, 2.8)
    ) < 1.0
    ll_len = U(0.40, 0.60)                           # the left lobe ends higher than the right
    ll_size = np.clip(np.sin(np.pi * np.clip(t / ll_len, 0.0, 1.0)), 0.0, 1.0) ** 0.6
    ll_cx, ll_cy = dome_r[0] + U(80, 105), body_cy + U(20, 40)
    ll_rot = math.radians(U(-25, 10))
    dx, dy = X - ll_cx, Y - ll_cy
    left_lobe = superellipse(
        math.cos(ll_rot) * dx + math.sin(ll_rot) * dy, -math.sin(ll_rot) * dx + math.cos(ll_rot) * dy,
        U(45, 68) * ll_size, U(22, 34) * ll_size, 2.0,
    ) < 1.0
    liver = abdomen & (t > 0.0) & (t < 1.0) & (right_lobe | left_lobe)
    liver &= (Y - spine_y) ** 2 + (X - spine_x) ** 2 > (vb_r + 14.0) ** 2
    paint.paint("liver", liver)
    vessels = liver & (np.abs(vessel_a) < U(0.17, 0.24)) & (np.abs(vessel_b) < U(0.17, 0.24))
    # Hepatic veins fan out from the IVC under the dome (right, middle, left; angles from the
    # patient's right towards the front); the portal vein enters at the hilum and splits in two.
    ivc_top = (spine_at[0] - U(22, 30), spine_at[1] + vb_r + U(12, 22), dome_z - U(12, 20))
    for angle, length, drop in ((U(-10, 15), U(80, 100), U(25, 45)), (U(35, 65), U(70, 95), U(30, 55)),
                                (U(80, 110), U(60, 85), U(15, 35))):
        end = (ivc_top[0] - length * math.cos(math.radians(angle)),
               ivc_top[1] + length * math.sin(math.radians(angle)), ivc_top[2] - drop)
        paint_tube(paint, a, "liver_vessel", ivc_top, end, U(5, 7), U(1.5, 2.5), within=liver)
    hilum = (dome_r[0] + U(45, 65), body_cy + U(0, 15), dome_z - height * U(0.35, 0.5))
    portal_in = (hilum[0] + U(15, 30), hilum[1] - U(5, 20), hilum[2] - U(40, 60))
    branches = (
        (portal_in, hilum, U(6, 8), U(5.5, 7)),
        (hilum, (hilum[0] - U(55, 80), hilum[1] + U(-15, 10), hilum[2] + U(0, 20)), U(5, 6.5), U(2, 3)),
        (hilum, (hilum[0] + U(25, 45), hilum[1] + U(15, 35), hilum[2] + U(5, 20)), U(4, 5.5), U(1.5, 2.5)),
    )
    for start, end, r0, r1 in branches:
        paint_tube(paint, a, "portal_vein", start, end, r0, r1, within=abdomen & ~liver)
        paint_tube(paint, a, "liver_vessel", start, end, r0, r1, within=liver)
    paint.paint("liver_vessel", vessels)
    gb_c = (dome_r[0] + U(35, 55), body_cy + U(15, 40), dome_z - height * U(0.45, 0.65))
    gb_radii = (U(12, 17), U(12, 17), U(25, 40))
    gb_rot = rotation_matrix(pitch=math.radians(U(-25, 25)))
    if U(0, 1) < 0.8:  # some patients have had their gallbladder removed
        box, sub = a.crop(gb_c, max(gb_radii))
        paint.paint("gallbladder", abdomen[box] & (ellipsoid(sub, gb_c, gb_radii, gb_rot) < 1.0), box)

    # --- spleen: a crescent in the left posterolateral upper abdomen ---------------------------
    sp_c = (spine_at[0] + U(82, 100), spine_at[1] + U(5, 30), dome_l[2] - U(30, 50))
    sp_yaw = math.radians(U(-70, -40))
    sp_rot = rotation_matrix(yaw=sp_yaw, pitch=math.radians(U(-15, 15)))
    sp_radii = (U(25, 32), U(52, 68), U(48, 64))
    hollow_c = (sp_c[0] - math.cos(sp_yaw) * sp_radii[0] * 2.0, sp_c[1] - math.sin(sp_yaw) * sp_radii[0] * 2.0, sp_c[2])
    hollow_radii = (sp_radii[0] * 1.3, sp_radii[1] * 1.1, sp_radii[2] * 1.2)
    box, sub = a.crop(sp_c, max(sp_radii))
    spleen = (ellipsoid(sub, sp_c, sp_radii, sp_rot) < 1.0) & (ellipsoid(sub, hollow_c, hollow_radii, sp_rot) > 1.0)
    paint.paint("spleen", abdomen[box] & spleen, box)

    # --- kidneys: cortex, medulla, hilum opening medially, perirenal fat ------------------------
    kr_z = dome_z - U(85, 115)
    for side, sign, centre_z in (("right", -1.0, kr_z), ("left", 1.0, kr_z + U(8, 25))):
        k_c = (spine_at[0] + sign * U(55, 70), spine_at[1] + U(0, 18), centre_z)
        k_rot = rotation_matrix(yaw=sign * math.radians(U(20, 40)), pitch=-sign * math.radians(U(8, 20)))
        radii = (U(23, 29), U(21, 27), U(46, 58))
        box, sub = a.crop(k_c, max(radii) * 1.25)
        lx, ly, lz = local_coordinates(sub, k_c, k_rot)
        e = (lx / radii[0]) ** 2 + (ly / radii[1]) ** 2 + (lz / radii[2]) ** 2
        hilum_notch = (-sign * lx > radii[0] * U(0.35, 0.5)) & (np.abs(lz) < radii[2] * U(0.3, 0.4))
        inside = abdomen[box]
        paint.paint("fat", inside & (e < 1.25**2), box)
        paint.paint(f"kidney_{side}_cortex", inside & (e < 1.0) & ~hilum_notch, box)
        paint.paint(f"kidney_{side}_medulla", inside & (e < U(0.45, 0.6)) & ~hilum_notch, box)

    # --- retroperitoneal muscles, great vessels, spine, ribs ----------------------------------
    back = spine_y - vb_r - U(12, 18)
    for sign in (-1.0, 1.0):
        erector = ((X - spine_x - sign * U(28, 36)) / U(24, 30)) ** 2 + ((Y - back) / U(20, 26)) ** 2 < 1.0
        paint.paint("muscle", body & erector)
        psoas_r = np.clip(6.0 + 16.0 * (kr_z + 20.0 - Z) / 90.0, 0.0, 22.0)  # grows downwards
        psoas = ((X - spine_x - sign * (vb_r + psoas_r * 0.8)) ** 2 + (Y - spine_y) ** 2) < psoas_r**2
        paint.paint("muscle", abdomen & psoas)
    aorta_x = spine_x + U(10, 20) + 4.0 * course_y
    aorta_y = front_of_spine + U(8, 14)
    paint.paint("aorta", cavity & ((X - aorta_x) ** 2 + (Y - aorta_y) ** 2 < U(10, 13.5) ** 2))
    ivc_x, ivc_y = spine_x - U(22, 32) + 3.0 * course_x, front_of_spine + U(10, 22)
    paint.paint("ivc", cavity & (((X - ivc_x) / U(11, 14)) ** 2 + ((Y - ivc_y) / U(7, 11)) ** 2 < 1.0))

    r_spine = np.hypot(X - spine_x, Y - spine_y)
    level = frac((Z - U(0, 40) + 0.15 * (Y - spine_y)) / U(30, 36))  # vertebra/disc along z
    vertebra = r_spine < vb_r
    paint.paint("bone_cortex", vertebra)
    paint.paint("bone_cancellous", r_spine < vb_r - 2.5)
    paint.paint("disc", vertebra & (level < U(0.17, 0.24)))
    canal_y = spine_y - vb_r - U(7, 9)
    r_canal = np.hypot(X - spine_x, Y - canal_y)
    paint.paint("bone_cortex", (r_canal < U(14, 16)) & (Y < spine_y - vb_r + 2.0))
    spinous = (np.abs(X - spine_x) < U(3, 4.5)) & (Y < canal_y) & (Y > canal_y - U(35, 45))
    paint.paint("bone_cortex", body & spinous)
    paint.paint("csf", r_canal < U(6.5, 8.5))

    phi = np.arctan2(Y - body_cy, X)
    from_back = np.arccos(np.clip(-np.sin(phi), -1.0, 1.0)) / np.pi   # 0 at the spine, 1 in front
    # Ribs run downwards all the way from the spine to the front, so a slice cuts short arcs.
    rib_phase = frac((Z + U(90, 140) * from_back - U(0, 30)) / U(24, 30))
    low_edge = dome_z - U(120, 150) + U(35, 65) * from_back
    rib_band = body & (depth > wall_t - U(4, 6)) & (depth < wall_t + U(3, 5))
    cartilage = np.abs(phi - np.pi / 2) < math.radians(U(25, 40))
    next_to_spine = np.abs(phi + np.pi / 2) < math.radians(10)
    paint.paint("bone_cortex", rib_band & (rib_phase < 0.33) & (Z > low_edge) & ~cartilage & ~next_to_spine)

    # --- intensities ---------------------------------------------------------------------------
    enhancement = U(0.3, 1.0)  # portal-venous contrast uptake of this case
    cortex = 60.0 + 120.0 * enhancement + U(-10, 10)
    medulla = cortex - U(15, 60) * enhancement
    vessel = 100.0 + 120.0 * enhancement + U(-10, 10)
    mean = {
        "air": -1000.0, "lung": U(-880, -820), "lung_vessel": U(-100, 20), "fat": U(-115, -85),
        "skin": U(0, 40), "muscle": U(35, 60), "bone_cortex": U(750, 1000), "bone_cancellous": U(360, 460),
        "disc": U(70, 110), "csf": U(5, 20), "liver": U(45, 62) + 55.0 * enhancement,
        "liver_vessel": vessel, "portal_vein": vessel, "gallbladder": U(0, 20),
        "kidney_right_cortex": cortex, "kidney_left_cortex": cortex,
        "kidney_right_medulla": medulla, "kidney_left_medulla": medulla,
        "spleen": U(45, 55) + 65.0 * enhancement + U(-5, 5), "aorta": 120.0 + 130.0 * enhancement,
        "ivc": 90.0 + 110.0 * enhancement, "heart_muscle": U(40, 60) + 40.0 * enhancement,
        "heart_blood": 110.0 + 120.0 * enhancement, "stomach_wall": U(40, 60) + 40.0 * enhancement,
        "stomach_content": U(5, 30), "bowel": U(20, 45) + 20.0 * enhancement, "gas": U(-1000, -950),
    }
    texture = {
        "lung": 25.0, "fat": 12.0, "muscle": 8.0, "liver": U(5, 10), "liver_vessel": 8.0, "spleen": 7.0,
        "kidney_right_cortex": 8.0, "kidney_left_cortex": 8.0, "kidney_right_medulla": 10.0,
        "kidney_left_medulla": 10.0, "bone_cancellous": 60.0, "bone_cortex": 80.0, "bowel": 20.0,
        "stomach_content": 8.0, "heart_blood": 6.0,
    }
    bias_gain, bias_offset, sigma = U(0.01, 0.04), U(4, 15), U(10, 25)
    # Only shape-dependent draws (white noise) from here on: the anatomy of a seed does not
    # depend on the grid shape.
    hu = render(paint.tissue, LIVER_TISSUES, mean, texture, (coarse_tex, fine_texture(rng, grid.shape)))
    blur_in_place(hu, grid)
    # A smooth multiplicative and additive bias inside the body (beam hardening, scatter).
    bias = bias_field * body
    hu = hu * (1.0 + bias_gain * bias) + bias_offset * bias
    hu += sigma * fine_texture(rng, grid.shape)   # CT noise, slightly correlated in-plane
    return np.clip(np.rint(hu), -1024, 3071).astype(np.float32), paint.tissue
