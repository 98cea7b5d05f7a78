"""Zero-shot classification with class prompt sets, and the classification metrics.

Score of class c for image i, over the class's presence prompts p:

- ``pool="ensemble"`` (the prompt ensemble of CLIP, Radford et al. 2021, section 3.1.4; the
  default): cos(image_i, normalise(mean_p normalise(prompt_{c,p}))), i.e. the image against the
  mean prompt embedding of the class;
- ``pool="mean"`` / ``"max"``: mean / max over p of cos(image_i, prompt_{c,p}).

"ensemble" and "mean" differ by the per-class factor 1 / ||mean_p prompt_{c,p}||, so they rank
images identically within a class but can pick different classes. The paper's protocol is one
prompt per class (``one_per_class=True``: the first presence prompt). With
``absence="subtract"`` the pooled similarity to the class's absence prompts is subtracted
(CheXzero-style positive-minus-negative).

Subclasses (hierarchical label sets, CHiLS: Novack et al., ICML 2023): a class of the YAML may list
``subclasses: {name: [prompts]}`` instead of ``presence``; each subclass is pooled on its own and the
class scores the max over its subclasses, so a grab-bag class ("others": atrophy, small vessel
disease, ...) is not one mean embedding that sits near none of its kinds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from medalign.eval.retrieval import cosine_similarity

PROMPTS_FILE = Path(__file__).with_name("prompts.yaml")
POOLS = ("ensemble", "mean", "max")
DEFAULT_POOL = "ensemble"


def load_prompts(path: str | Path | None = None, *, classes: Sequence[str] | None = None,
                 one_per_class: bool = False) -> dict[str, dict[str, list]]:
    """Read a prompts YAML -> {class: {"presence": [...], "absence": [...]}} in ``classes`` order; a class
    given by ``subclasses`` also gets ``"groups"``: its subclass index per presence prompt.

    ``one_per_class`` keeps only the first presence prompt and no absence prompts.
    """
    import yaml

    from medalign.data.schema import CLASSES
    from medalign.errors import MedAlignError

    path = Path(path) if path is not None else PROMPTS_FILE
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    classes = list(classes or CLASSES)
    out = {}
    for c in classes:
        entry = raw.get(c)
        if entry is None:
            raise MedAlignError(f"{path}: no prompts for class '{c}'")
        if isinstance(entry, list):  # bare list = presence prompts only
            entry = {"presence": entry}
        pres, groups = _presence(entry, c, path)
        absn = [str(p) for p in entry.get("absence") or []]
        if one_per_class:
            out[c] = {"presence": pres[:1], "absence": []}
        else:
            out[c] = {"presence": pres, "absence": absn, **({"groups": groups} if groups else {})}
    return out


def _presence(entry: dict, c: str, path: Path) -> tuple[list[str], list[int]]:
    """(presence prompts, subclass index per prompt or [] without subclasses) of one YAML class entry."""
    from medalign.errors import MedAlignError

    subs = entry.get("subclasses")
    if subs is None:
        pres = [str(p) for p in entry.get("presence") or []]
        if not pres:
            raise MedAlignError(f"{path}: class '{c}' has no presence prompts")
        return pres, []
    if entry.get("presence") or not isinstance(subs, dict) or not subs:
        raise MedAlignError(f"{path}: class '{c}': give either presence prompts or a non-empty subclasses mapping "
                            "{name: [prompts]}, not both")
    pres, groups = [], []
    for k, (name, prompts) in enumerate(subs.items()):
        prompts = prompts.get("presence") if isinstance(prompts, dict) else prompts
        if not prompts or not isinstance(prompts, list):
            raise MedAlignError(f"{path}: class '{c}', subclass '{name}' has no prompts")
        pres += [str(p) for p in prompts]
        groups += [k] * len(prompts)
    return pres, groups


def pool_scores(sim: np.ndarray, pool: str) -> np.ndarray:
    """(N, P) similarities to P prompts -> (N,) by mean or max (``ensemble`` pools embeddings, not scores)."""
    if pool == "mean":
        return sim.mean(axis=1)
    if pool == "max":
        return sim.max(axis=1)
    raise ValueError(f"unknown pool '{pool}'; allowed: mean, max (and 'ensemble' in zero_shot_scores)")


def ensemble_embedding(prompt_embed: np.ndarray) -> np.ndarray:
    """(P, E) prompt embeddings -> (1, E): the L2-normalised mean of the L2-normalised prompts."""
    pe = np.asarray(prompt_embed, dtype=np.float64)
    pe = pe / np.maximum(np.linalg.norm(pe, axis=1, keepdims=True), 1e-12)  # (P, E)
    m = pe.mean(axis=0, keepdims=True)  # (1, E)
    return m / max(float(np.linalg.norm(m)), 1e-12)


def zero_shot_scores(
    image_embed: np.ndarray,
    presence: Sequence[np.ndarray | Sequence[np.ndarray]],
    *,
    absence: Sequence[np.ndarray | None] | None = None,
    pool: str = DEFAULT_POOL,
) -> np.ndarray:
    """(N, E) images x per-class prompt embeddings [(P_c, E)] -> (N, C) class scores. A class given as a
    list of arrays [(P_k, E)] has subclasses: each is pooled alone and the class takes their max."""
    if pool not in POOLS:
        raise ValueError(f"unknown pool '{pool}'; allowed: {', '.join(POOLS)}")

    def score(pe: np.ndarray) -> np.ndarray:  # (N,)
        if pool == "ensemble":
            return cosine_similarity(image_embed, ensemble_embedding(pe))[:, 0]
        return pool_scores(cosine_similarity(image_embed, pe), pool)

    cols = []
    for c, pe in enumerate(presence):
        s = np.max(np.stack([score(g) for g in pe], axis=1), axis=1) if isinstance(pe, (list, tuple)) else score(pe)
        if absence is not None and absence[c] is not None and len(absence[c]):
            s = s - score(absence[c])
        cols.append(s)
    return np.stack(cols, axis=1)  # (N, C)


def embed_prompts(prompts: Mapping[str, Mapping[str, list[str]]],
                  encode_text: Callable[[list[str]], np.ndarray]) -> dict:
    """Encode every prompt once -> {"classes", "texts", "class_index", "kind", "group", "embed"} (flat arrays;
    ``group``: a presence prompt's subclass index within its class, 0 without subclasses, -1 for absence)."""
    texts, cls, kind, group = [], [], [], []
    for ci, (c, entry) in enumerate(prompts.items()):
        pres = list(entry.get("presence", []))
        groups = list(entry.get("groups") or [0] * len(pres))
        for t, g in zip(pres, groups):
            texts.append(t), cls.append(ci), kind.append("presence"), group.append(int(g))
        for t in entry.get("absence", []):
            texts.append(t), cls.append(ci), kind.append("absence"), group.append(-1)
    emb = np.asarray(encode_text(texts), dtype=np.float32)
    return {"classes": np.asarray(list(prompts)), "texts": np.asarray(texts), "class_index": np.asarray(cls),
            "kind": np.asarray(kind), "group": np.asarray(group, dtype=int), "embed": emb}


def scores_from_prompt_bank(image_embed: np.ndarray, bank: Mapping, *, pool: str = DEFAULT_POOL,
                            absence: str = "ignore", one_per_class: bool = False) -> np.ndarray:
    """Class scores from a flat prompt bank (as made by :func:`embed_prompts`)."""
    if absence not in ("ignore", "subtract"):
        raise ValueError(f"absence must be 'ignore' or 'subtract', got '{absence}'")
    ci, kind, emb = np.asarray(bank["class_index"]), np.asarray(bank["kind"]), np.asarray(bank["embed"])
    group = np.asarray(bank.get("group", np.zeros(len(ci), dtype=int)))  # banks saved before subclasses: none
    pres, absn = [], []
    for c in range(len(bank["classes"])):
        sel = (ci == c) & (kind == "presence")
        p, g = emb[sel], group[sel]
        if one_per_class:
            pres.append(p[:1])
        else:  # one array per subclass (in YAML order) when the class has several, else the class's array
            subs = [p[g == k] for k in dict.fromkeys(g.tolist())]
            pres.append(subs if len(subs) > 1 else p)
        a = emb[(ci == c) & (kind == "absence")]
        absn.append(a if (absence == "subtract" and not one_per_class) else None)
    return zero_shot_scores(image_embed, pres, absence=absn, pool=pool)


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def binary_auroc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC by the Mann-Whitney statistic (ties count one half); None if one class only."""
    from scipy.stats import rankdata

    positive = np.asarray(positive, bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    r = rankdata(np.asarray(score, np.float64))  # average ranks for ties
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(y_true: Sequence[int], scores: np.ndarray, *, n_classes: int | None = None,
                           class_names: Sequence[str] | None = None) -> dict:
    """Accuracy, balanced accuracy, macro-F1 and one-vs-rest AUROC from (N, C) scores.

    Balanced accuracy and macro-F1 average over the classes present in ``y_true``; AUROC
    per class is None where the class is absent (or the only one) in ``y_true``.
    """
    y = np.asarray(y_true, dtype=int)
    scores = np.asarray(scores, dtype=np.float64)
    n_classes = n_classes or scores.shape[1]
    pred = scores.argmax(axis=1)
    cm = confusion_matrix(y, pred, n_classes)
    present = np.flatnonzero(cm.sum(axis=1) > 0)
    recall = np.diag(cm)[present] / cm.sum(axis=1)[present]
    f1s = []
    for c in present:
        tp, fp, fn = cm[c, c], cm[:, c].sum() - cm[c, c], cm[c, :].sum() - cm[c, c]
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    auroc = [binary_auroc(y == c, scores[:, c]) for c in range(n_classes)]
    valid = [a for a in auroc if a is not None]
    names = list(class_names) if class_names is not None else [str(c) for c in range(n_classes)]
    return {
        "accuracy": float(np.mean(pred == y)),
        "balanced_accuracy": float(recall.mean()),
        "macro_f1": float(np.mean(f1s)),
        "auroc_macro": float(np.mean(valid)) if valid else None,
        "auroc": dict(zip(names, auroc)),
        "confusion": cm.tolist(),
        "classes": names,
        "n": int(len(y)),
    }
