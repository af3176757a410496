"""AI segmentation in the lake: series to volumes, models (MONAI, thresholds) from a registry,
DICOM SEG, statistics and meshes written back. An extra (``pip install 'voxlake[ai]'``): nothing
here is imported by ``import voxlake``."""
