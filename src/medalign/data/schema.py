"""The data contract shared by every part of medalign (see DESIGN.md, 'The data contract')."""
from __future__ import annotations

# The five classes of the brain-CLIP paper, in this order everywhere (label ints index this list).
CLASSES: tuple[str, ...] = ("infarct", "tumor", "hemorrhage", "normal", "others")

# Sequence names a manifest may carry as `image_<name>` columns.
# dwi = DWI b1000, adc, t2s = T2* (GRE), flair, t1, t2, t1c = post-contrast T1.
KNOWN_SEQUENCES: tuple[str, ...] = ("dwi", "adc", "t2s", "flair", "t1", "t2", "t1c")

# Other names for the known sequences (BraTS "t1ce", SWI read as T2*-weighted, ...): a manifest
# column, an API dict key or a DICOM identification may use them; they are read as the canonical name.
SEQUENCE_ALIASES: dict[str, str] = {
    "swi": "t2s", "t2star": "t2s", "gre": "t2s",
    "t1ce": "t1c", "t1gd": "t1c", "t1post": "t1c",
    "trace": "dwi", "b1000": "dwi",
}


def canonical_sequence(name: str) -> str | None:
    """A sequence name (any case, an alias allowed) -> its canonical name, or None if unknown."""
    n = str(name).strip().lower()
    n = SEQUENCE_ALIASES.get(n, n)
    return n if n in KNOWN_SEQUENCES else None


# The paper's three input channels, in this order.
PAPER_SEQUENCES: tuple[str, ...] = ("dwi", "t2s", "flair")

# Paper's target grid, (D, H, W) = 16 axial slices of 112 x 112.
PAPER_SHAPE: tuple[int, int, int] = (16, 112, 112)

REQUIRED_COLUMNS: tuple[str, ...] = ("study_id", "patient_id")
OPTIONAL_COLUMNS: tuple[str, ...] = ("split", "label", "report", "report_paraphrases", "mask", "omics", "bag")
# Other wordings of a study's report (a JSON list of texts): extra text views in training only.
PARAPHRASES_COLUMN = "report_paraphrases"
SPLITS: tuple[str, ...] = ("train", "val", "test")

# How many studies a search returns when the caller does not say: the CLI, the HTTP API and the web page.
DEFAULT_TOP_K = 10
IMAGE_PREFIX = "image_"


def image_column(sequence: str) -> str:
    return f"{IMAGE_PREFIX}{sequence}"


def label_index(label: str) -> int:
    """Class name -> int; raises ValueError naming the allowed classes."""
    try:
        return CLASSES.index(label)
    except ValueError:
        raise ValueError(f"unknown label '{label}'; allowed: {', '.join(CLASSES)}") from None
