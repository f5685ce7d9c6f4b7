"""Synthetic phantoms: abdominal CT, cardiac cine-MR volumes and echo cine loops with exact labels.

The phantoms are the test data of the project and the data of ``jointreg demo``. They are built
to matter for registration: every organ is a deformed implicit shape whose cross-section changes
smoothly and non-rigidly from slice to slice (the liver is large under the diaphragm dome, narrows
to the tip of its right lobe; the left ventricle shrinks to the apex) and from case to case
(shape, size, position, rotation, a smooth random displacement of the whole anatomy, texture,
noise and bias field). Everything is exactly reproducible from an integer seed.

Construction, in one pass over the grid (numpy, no loops over voxels):

1. World coordinates of the voxel centres (millimetres, volume centred at the origin) are mapped
   to *anatomical* coordinates by a random in-plane rotation, a shift and a smooth random
   displacement field (cubic B-spline noise), so that every shape below is deformed non-rigidly.
2. Tissues are painted as implicit shapes in anatomical coordinates, later tissues over earlier
   ones, into a ``tissue`` map (one id per tissue, e.g. ``liver_vessel``, ``kidney_left_cortex``).
3. The label map is a lookup of the tissue map, so labels and intensities agree by construction.
   The image is a lookup of per-case tissue intensities plus texture, blurred slightly (partial
   volume), with a smooth bias field and noise.

Kinds (see :data:`PHANTOM_KINDS`):

``liver-ct``
    Axial portal-venous abdominal CT in Hounsfield units, 128×128×44 voxels at 2.8×2.8×5 mm
    (axis 2 runs inferior → superior). Labels follow CHAOS: background 0, liver 1, kidney_right 2,
    kidney_left 3, spleen 4. Intrahepatic portal/hepatic vessels belong to the liver label (as in
    CHAOS, LiTS and TotalSegmentator); the IVC, aorta, gallbladder and renal sinus fat do not.
``cardiac-mr``
    Short-axis bSSFP-like stack, 128×128×12 voxels at 1.8×1.8×8 mm (axis 2 runs apex → base and
    beyond into the atria). Labels follow ACDC: background 0, rv 1, myocardium 2, lv 3; papillary
    muscles belong to the LV cavity (ACDC convention).
``echo-a4c``
    Apical four-chamber-like B-mode echocardiography loop as a 2D+t "volume", 112×112×32 at
    1.5×1.5 mm × 33 ms: axis 0 lateral, axis 1 depth from the probe, axis 2 time (frames are the
    slices; the third spacing is the frame interval in milliseconds). Sector field of view,
    speckle, depth attenuation; the LV contracts and the LA fills over one to two beats. Labels
    follow CAMUS: background 0, lv 1, myocardium 2, atrium 3 (left). :func:`ed_es_frames` gives the ED and
    ES frames; ``jointreg sparsify --strategy extremes --classes lv --slices-per-volume 2``
    keeps only those two annotated, as in the echo datasets.

Modules, from the building blocks up:

* :mod:`~jointreg.data.phantoms.noise`: smooth random fields and texture;
* :mod:`~jointreg.data.phantoms.grid`: the voxel grid and the deformed anatomical coordinates;
* :mod:`~jointreg.data.phantoms.shapes`: implicit shapes (ellipsoids, tubes, superellipses);
* :mod:`~jointreg.data.phantoms.painting`: the tissue map, its rendering and blur;
* :mod:`~jointreg.data.phantoms.liver_ct`, :mod:`~jointreg.data.phantoms.cardiac_mr`,
  :mod:`~jointreg.data.phantoms.echo`: the kinds;
* :mod:`~jointreg.data.phantoms.kinds`: the registry and :func:`make_phantom`;
* :mod:`~jointreg.data.phantoms.generate`: :func:`generate_phantom_dataset`.

Example:
    >>> from jointreg.data.phantoms import make_phantom
    >>> p = make_phantom("liver-ct", seed=3, shape=(64, 64, 22))
    >>> p.image.shape, p.labels["liver"]
    ((64, 64, 22), 1)
"""

from jointreg.data.phantoms.cardiac_mr import CARDIAC_LABELS, CARDIAC_TISSUES
from jointreg.data.phantoms.echo import ECHO_LABELS, ECHO_TISSUES, CardiacCycle, draw_cycle, ed_es_frames
from jointreg.data.phantoms.generate import generate_phantom_dataset
from jointreg.data.phantoms.grid import Grid, Shape3, Spacing3, deformed_coordinates
from jointreg.data.phantoms.kinds import (
    PHANTOM_KINDS,
    Phantom,
    PhantomKind,
    case_id,
    case_seed,
    make_phantom,
    phantom_kind,
    phantom_rng,
    resolve_geometry,
)
from jointreg.data.phantoms.liver_ct import LIVER_LABELS, LIVER_TISSUES
from jointreg.data.phantoms.noise import smooth_noise

# The building blocks had private names while the phantoms were one module; code written then
# imports them under those names.
_Grid = Grid
_deformed_coordinates = deformed_coordinates
_smooth_noise = smooth_noise

__all__ = [
    "CARDIAC_LABELS",
    "CARDIAC_TISSUES",
    "CardiacCycle",
    "ECHO_LABELS",
    "ECHO_TISSUES",
    "LIVER_LABELS",
    "LIVER_TISSUES",
    "PHANTOM_KINDS",
    "Phantom",
    "PhantomKind",
    "Shape3",
    "Spacing3",
    "case_id",
    "case_seed",
    "draw_cycle",
    "ed_es_frames",
    "generate_phantom_dataset",
    "make_phantom",
    "phantom_kind",
    "phantom_rng",
    "resolve_geometry",
]
