"""Synthetic cohorts with known ground truth: brain MRI + reports, image-omic bags."""
