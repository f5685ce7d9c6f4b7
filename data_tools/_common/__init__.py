"""Helpers shared by the converters: label maps, case ids, globs, splits and the output dataset.

Every converter turns some raw layout into the canonical dataset (see
:mod:`jointreg.data.dataset`) the same way:

1. check the output folder before reading anything (:func:`check_new_output`);
2. find the cases and give them sortable ids (:func:`match_glob`, :func:`make_case_ids`);
3. choose the test cases (:func:`split_cases`);
4. write every case through a :class:`DatasetBuilder` inside :func:`dataset_output`, which builds
   the folder under a temporary name, so that a failure on the last case leaves nothing behind,
   and writes the final ``dataset.json`` (labels, ``numTraining``) once every case is in.

Only the standard library is imported at module level: ``jointreg --help`` imports every
converter to list it, and must stay fast. numpy and friends are imported inside functions.

Modules: :mod:`~data_tools._common.labels` (label maps), :mod:`~data_tools._common.cases` (case
ids, globs, splits), :mod:`~data_tools._common.output` (the output dataset) and
:mod:`~data_tools._common.options` (shared command-line options); every name is importable from
``data_tools._common``.
"""

from data_tools._common.cases import find_patient_folders, make_case_ids, match_glob, natural_key, pair_files, split_cases
from data_tools._common.labels import BACKGROUND, UNMAPPED_CHOICES, LabelMap, parse_class, value_counts
from data_tools._common.options import add_label_map_arguments, add_output_arguments, add_split_arguments, label_map_from_args
from data_tools._common.output import DatasetBuilder, check_new_output, dataset_output, describe

__all__ = [
    "BACKGROUND",
    "UNMAPPED_CHOICES",
    "DatasetBuilder",
    "LabelMap",
    "add_label_map_arguments",
    "add_output_arguments",
    "add_split_arguments",
    "check_new_output",
    "dataset_output",
    "describe",
    "label_map_from_args",
    "make_case_ids",
    "match_glob",
    "natural_key",
    "find_patient_folders",
    "pair_files",
    "parse_class",
    "split_cases",
    "value_counts",
]
