"""Phases 5-7, segmentation: the segmenters, the Rand Aug and UniMatch views (``augment``), the confidence
filter and quality report, segmenter training, metrics and evaluation."""
