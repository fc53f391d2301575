"""The paper's Table 1 (Yao et al., ICCV 2015) and printing results in its layout."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vidcap.model.captioner import LOCAL_VARIANTS

# Table 1 of the paper: (BLEU-4, METEOR, CIDEr, perplexity) per variant and dataset.
PAPER_TABLE1: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "msvd": {
        "basic": (0.3869, 0.2868, 0.4478, 33.09),
        "local": (0.3875, 0.2832, 0.5087, 33.42),
        "global": (0.4028, 0.2900, 0.4801, 27.89),
        "local_global": (0.4192, 0.2960, 0.5167, 27.55),
    },
    "lsmdc": {
        "basic": (0.003, 0.044, 0.044, 88.28),
        "local": (0.004, 0.051, 0.050, 84.41),
        "global": (0.003, 0.040, 0.047, 66.63),
        "local_global": (0.007, 0.057, 0.061, 65.44),
    },
}

VARIANT_LABELS = {
    "basic": "Enc-Dec (Basic)",
    "local": "+ Local (3-D CNN)",
    "global": "+ Global (temporal attention)",
    "local_global": "+ Local + Global",
}

# metrics.json key -> column title, in the paper's column order.
COLUMNS = (("Bleu_4", "BLEU-4"), ("METEOR", "METEOR"), ("CIDEr", "CIDEr"), ("perplexity", "Perplexity"))


def paper_row(dataset: str, variant: str) -> dict[str, float] | None:
    """The paper's numbers for a dataset (`msvd`, `lsmdc`; `youtube2text`/`dvs`/`mvad` accepted) and variant."""
    aliases = {"youtube2text": "msvd", "y2t": "msvd", "dvs": "lsmdc", "mvad": "lsmdc", "m-vad": "lsmdc"}
    dataset = aliases.get(dataset.lower(), dataset.lower())
    values = PAPER_TABLE1.get(dataset, {}).get(variant)
    if values is None:
        return None
    return dict(zip((key for key, _ in COLUMNS), values, strict=True))


def format_table(rows: Sequence[tuple[str, Mapping[str, float]]], extra: Sequence[str] = ()) -> str:
    """Rows of (label, metrics) as a Markdown table in Table 1's layout (plus `extra` metric columns)."""
    keys = [key for key, _ in COLUMNS] + list(extra)
    titles = [title for _, title in COLUMNS] + list(extra)
    cells = [
        [
            "-" if metrics.get(key) is None else f"{metrics[key]:.{2 if key == 'perplexity' else 4}f}"
            for key in keys
        ]
        for _, metrics in rows
    ]
    label_width = max([len("model")] + [len(label) for label, _ in rows])
    widths = [max([len(title)] + [len(row[i]) for row in cells]) for i, title in enumerate(titles)]
    lines = [
        "| " + "model".ljust(label_width) + " | " + " | ".join(t.rjust(w) for t, w in zip(titles, widths, strict=True)) + " |",
        "|" + "-" * (label_width + 2) + "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for (label, _), row in zip(rows, cells, strict=True):
        lines.append(
            "| " + label.ljust(label_width) + " | " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |"
        )
    return "\n".join(lines)


def model_label(model: Mapping[str, Any], local_features: str | None = None) -> str:
    """Table 1's name of a model (`+ Global (temporal attention)`), with its frame encoder when it has one and, for
    the variants with local features, the local extractor when it is named (the paper's rows say 3-D CNN)."""
    label = VARIANT_LABELS.get(model.get("variant"), str(model.get("variant")))
    details = []
    if local_features and model.get("variant") in LOCAL_VARIANTS:
        label = label.replace(" (3-D CNN)", "")
        details.append(f"local: {local_features}")
    encoder = model.get("encoder", "none")
    if encoder not in (None, "none"):
        details.append(f"{encoder} encoder")
    return f"{label} [{', '.join(details)}]" if details else label


def local_feature_name(meta: Mapping[str, Any]) -> str | None:
    """The local extractor's name in a feature-store meta.json, or None when it has no local features."""
    return (meta.get("local") or {}).get("name")
