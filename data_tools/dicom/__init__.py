"""Convert DICOM series (one folder per case, or a single series) into a dataset.

Input: --input DIR with one folder per case (the DICOM files may sit in a subfolder such as
DICOM_anon/; every file in the case folder is tried), --input 'DIR/*/SUB' for the folder SUB of
every case (the '*' is the case id; CHAOS MR: 'MR/*/T2SPIR'), or --series DIR for one series.
Files that are not DICOM images are skipped. A folder holding several series (several
SeriesInstanceUIDs) is an error: put each series in its own folder.

Geometry: slices are sorted by their position along the slice normal (ImagePositionPatient
projected on the cross product of the ImageOrientationPatient vectors), never by file name or
InstanceNumber. Intensities are rescaled with RescaleSlope/RescaleIntercept (Hounsfield units for
CT). The affine comes from ImageOrientationPatient, ImagePositionPatient and PixelSpacing, and
the slice step from the positions themselves (gantry tilt is kept as a sheared affine); DICOM's
LPS coordinates are turned into NIfTI's RAS. Unequal slice steps (a missing slice), two slices at
one position or differing orientations are errors.

Array axes, as dcm2niix writes them: i = DICOM column (left to right as displayed), j = DICOM
row counted from the bottom of the displayed image, k = slice, from the lowest position along the
normal upward. A DICOM pixel array is (rows, columns) = (y, x), so volume[i, j, k] =
pixels_k[rows - 1 - j, i]. Masks drawn on a dcm2niix conversion therefore overlay exactly.

Masks (optional):
  --masks-nifti GLOB   one NIfTI per case, '*' standing for the case folder name (a plain path
                       with --series). A mask on the same voxel grid in another axis order (e.g.
                       written by ITK) is reoriented; any other geometry is an error.
  --png-masks SUBDIR   CHAOS CT layout: one PNG per slice in CASE/SUBDIR (e.g. Ground), PNG
                       pixel (row, col) = DICOM pixel (row, col). PNG n (in natural name order)
                       belongs to DICOM file n in natural name order (--png-order name, the CHAOS
                       convention i0000,0000b.dcm <-> liver_GT_000.png), to the n-th file by
                       InstanceNumber (instance), or to the n-th slice by position (position).
  --png-label liver:1  every non-zero pixel is liver (id 1); or value maps such as
                       --png-label 63=liver:1 126=kidney_right:2 189=kidney_left:3 252=spleen:4
NIfTI masks take --map/--unmapped as paired-nifti does. Without masks the cases are unlabelled:
each training case gets a label that is "ignore" everywhere.

Examples:
  jointreg prepare dicom --input CHAOS/Train_Sets/CT --png-masks Ground --png-label liver:1 \\
      --case-prefix chaosct_ --out data/chaos_ct
  jointreg prepare dicom --input 'CHAOS/Train_Sets/MR/*/T2SPIR' --png-masks Ground \\
      --png-label 63=liver:1 126=kidney_right:2 189=kidney_left:3 252=spleen:4 --out data/chaos_mr
  jointreg prepare dicom --series ../shared/data/totalseg_ct/example_ct_dicom \\
      --masks-nifti ../shared/data/totalseg_ct/example_seg_dicom.nii.gz --map 5=liver:1 \\
      --unmapped background --out data/totalseg_liver
"""

# The docstring above is the --help text of ``jointreg prepare dicom``. The converter's parts:
# geometry.py (pure DICOM geometry), series.py (reading one series), masks.py (PNG and NIfTI
# masks) and convert.py (the conversion and its options); every name is importable from here.

from data_tools.dicom.convert import HELP, SOURCE, add_arguments, convert_dicom, find_cases, run
from data_tools.dicom.geometry import dicom_affine, slice_normal, stack_to_volume
from data_tools.dicom.masks import PNG_ORDERS, PngLabels, align_mask, read_png_masks
from data_tools.dicom.series import DicomSeries, DicomSlice, check_single_series, order_slices, read_dicom_series, scan_folder

__all__ = [
    "HELP",
    "PNG_ORDERS",
    "SOURCE",
    "DicomSeries",
    "DicomSlice",
    "PngLabels",
    "add_arguments",
    "align_mask",
    "check_single_series",
    "convert_dicom",
    "dicom_affine",
    "find_cases",
    "order_slices",
    "read_dicom_series",
    "read_png_masks",
    "run",
    "scan_folder",
    "slice_normal",
    "stack_to_volume",
]
