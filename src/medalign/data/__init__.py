"""Data layer: manifest, imaging I/O and preprocessing, cache, datasets, report labels, synthetic cohorts."""
