"""Paper experiments: drive recipes through the one loop (medalign.train) and score them with
medalign.eval. Only the command line imports this package.

- ``localisation``: GLoRIA pointing game / attention mass / voxel AUROC vs masks, attention maps
- ``label_efficiency``: SimCLR / MICLe pretraining vs scratch at 1 / 10 / 100 % labels
- ``hlss_knn``: HLSS kNN at patient / study / slab level
- ``gimp``: GiMP on TCGA expression and the synthetic image-omic ablation
"""
