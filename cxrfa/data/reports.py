"""Short free-text reports in the style of real chest radiograph reports, for synthetic images.

Present findings are stated with the label's own words (``cxrfa.labels.display_name``), so the text
prompts used for alignment match the report vocabulary; some absent findings are negated, as radiologists do.
Phrasing follows the Indiana University chest X-ray reports (findings + impression).
"""

from __future__ import annotations

import numpy as np

_SIDE = {-1: "right", 1: "left", 0: "bilateral"}  # image-left is the patient's right
_SIZE = ("small", "moderate", "large")
_ZONE = ("upper", "mid", "lower")

_PRESENT: dict[str, tuple[str, ...]] = {
    "Atelectasis": (
        "Linear opacity in the {side} lung base consistent with atelectasis.",
        "{Side} basilar atelectasis with mild volume loss.",
        "Plate-like atelectasis at the {side} base.",
    ),
    "Cardiomegaly": (
        "The heart is enlarged, consistent with cardiomegaly.",
        "Cardiomegaly.",
        "Stable cardiomegaly. Enlarged cardiac silhouette.",
    ),
    "Effusion": (
        "{Size} {side} pleural effusion with blunting of the costophrenic angle.",
        "There is a {size} {side} pleural effusion.",
        "{Size} {side} effusion.",
    ),
    "Infiltration": (
        "Patchy bilateral infiltration.",
        "Diffuse interstitial infiltration in both lungs.",
        "Scattered infiltration in the lungs.",
    ),
    "Mass": (
        "{Size} {side} {zone} lung mass.",
        "There is a mass in the {side} {zone} lung zone.",
        "Lobulated {side} lung mass, recommend CT for further evaluation.",
    ),
    "Nodule": (
        "{Side} {zone} lung nodule.",
        "There is a small nodule in the {side} {zone} lung zone.",
        "Rounded nodule projects over the {side} lung.",
    ),
    "Pneumonia": (
        "Airspace opacity in the {side} {zone} lung compatible with pneumonia.",
        "{Side} {zone} lobe pneumonia.",
        "Patchy opacity concerning for pneumonia.",
    ),
    "Pneumothorax": (
        "{Size} {side} pneumothorax.",
        "There is a {size} {side} apical pneumothorax.",
        "{Side} pneumothorax with visible pleural line.",
    ),
    "Consolidation": (
        "Focal consolidation in the {side} {zone} lung.",
        "{Side} {zone} lobe consolidation.",
        "Dense airspace consolidation in the {side} lung.",
    ),
    "Edema": (
        "Bilateral perihilar haziness consistent with pulmonary edema.",
        "Interstitial edema with Kerley B lines.",
        "Pulmonary vascular congestion and edema.",
    ),
    "Emphysema": (
        "The lungs are hyperlucent and hyperinflated compatible with emphysema.",
        "Hyperexpanded lungs with flattening of the hemidiaphragms, consistent with emphysema.",
        "Emphysema.",
    ),
    "Fibrosis": (
        "Reticular interstitial markings at the lung bases consistent with fibrosis.",
        "Chronic interstitial fibrosis.",
        "Coarse reticular opacities compatible with fibrosis.",
    ),
    "Pleural_Thickening": (
        "{Side} pleural thickening.",
        "Apical pleural thickening, unchanged.",
        "There is {side} lateral pleural thickening.",
    ),
    "Hernia": (
        "Retrocardiac air-fluid level consistent with hiatal hernia.",
        "Hiatal hernia.",
        "Large hiatal hernia projecting behind the heart.",
    ),
}

_NEGATED: dict[str, tuple[str, ...]] = {
    "Pneumothorax": ("No pneumothorax.", "There is no evidence of pneumothorax."),
    "Effusion": ("No pleural effusion.", "There is no pleural effusion."),
    "Consolidation": ("No focal consolidation.", "There is no focal airspace consolidation."),
    "Edema": ("No pulmonary edema.", "No typical findings of pulmonary edema."),
}

_NORMAL_HEART = (
    "The cardiac silhouette and mediastinum size are within normal limits.",
    "Heart size within normal limits.",
    "The heart is normal in size. The mediastinum is unremarkable.",
    "Cardiomediastinal silhouette and pulmonary vasculature are within normal limits.",
)
_CLEAR = ("Lungs are clear.", "The lungs are clear bilaterally.", "The lungs are well expanded and clear.")
_OTHER = (
    "No acute osseous findings.",
    "Degenerative changes of the thoracic spine.",
    "Osseous structures intact.",
    "",
    "",
)
_IMPRESSION_NORMAL = (
    "No acute cardiopulmonary abnormality.",
    "No acute cardiopulmonary findings.",
    "No active disease.",
)


def _fill(template: str, side: int, severity: float, zone: float) -> str:
    size = _SIZE[min(2, int(severity * 3))]
    zone_word = _ZONE[min(2, int((zone + 1.0) * 1.5))]
    side_word = _SIDE[side]
    text = template.format(
        side=side_word, Side=side_word.capitalize(), size=size, Size=size.capitalize(), zone=zone_word
    )
    return text.replace("bilateral apical", "bilateral").replace(
        "bilateral pleural effusion", "bilateral pleural effusions"
    )


def write_report(findings: dict[str, tuple[float, int, float]], view: str, rng: np.random.Generator) -> str:
    """A report for one image.

    Args:
        findings: present label -> (severity in (0, 1], side -1/0/+1, vertical position in [-1, 1]).
        view: ``PA`` or ``AP`` (portable films say so).
        rng: the image's generator (reports are deterministic per image).

    Returns:
        ``"FINDINGS: ... IMPRESSION: ..."`` on one line.
    """
    parts: list[str] = []
    if view == "AP":
        parts.append(
            str(rng.choice(("Portable AP view of the chest.", "Single portable view of the chest.")))
        )
    if "Cardiomegaly" not in findings:
        parts.append(str(rng.choice(_NORMAL_HEART)))
    stated = []
    for label, (severity, side, zone) in findings.items():
        stated.append(_fill(str(rng.choice(_PRESENT[label])), side, severity, zone))
    parts.extend(stated)
    if not findings:
        parts.append(str(rng.choice(_CLEAR)))
    for label, phrases in _NEGATED.items():
        if label not in findings and rng.random() < 0.6:
            parts.append(str(rng.choice(phrases)))
    parts.append(str(rng.choice(_OTHER)))
    if findings:
        names = [label.replace("_", " ").lower() for label in findings]
        impression = (", ".join(names[:-1]) + " and " + names[-1]) if len(names) > 1 else names[0]
        impression = impression[0].upper() + impression[1:] + "."
    else:
        impression = str(rng.choice(_IMPRESSION_NORMAL))
    findings_text = " ".join(p for p in parts if p)
    return f"FINDINGS: {findings_text} IMPRESSION: {impression}"


def label_sentence(present: list[str]) -> str:
    """A report-like sentence stating an image's present labels, for data without reports (MedCLIP-style
    label prompts): ``"Findings: cardiomegaly and effusion."`` or ``"No acute cardiopulmonary abnormality."``."""
    from cxrfa.labels import display_name

    if not present:
        return _IMPRESSION_NORMAL[0]
    names = [display_name(label).lower() for label in present]
    listed = (", ".join(names[:-1]) + " and " + names[-1]) if len(names) > 1 else names[0]
    return f"Findings: {listed}."


def label_sentences(labels: list[str], matrix: np.ndarray) -> list[str]:
    """One :func:`label_sentence` per row of a (M, C) 1/0/NaN label matrix (unknown labels are not stated)."""
    return [label_sentence([lab for lab, v in zip(labels, row, strict=True) if v == 1]) for row in matrix]


# Varied label statements for contrastive pretraining: the same findings in several phrasings and orders, so the
# text tower learns the finding words and their negation rather than one fixed sentence per label vector.
_STATE_PRESENT = (
    "{} is present.",
    "there is {}.",
    "evidence of {}.",
    "{}.",
    "findings of {}.",
    "{} is seen.",
)
_STATE_ABSENT = ("no {}.", "there is no {}.", "no evidence of {}.", "{} is not seen.", "without {}.")
_STATE_NORMAL = (
    "no acute cardiopulmonary abnormality.",
    "normal chest radiograph.",
    "the lungs are clear.",
    "no active disease.",
)


def varied_label_sentence(
    present: list[str], absent: list[str], rng: np.random.Generator, max_absent: int = 3
) -> str:
    """One randomly phrased statement of an image's findings: every present label (shuffled, each with a random
    template) and up to ``max_absent`` of its known-absent labels negated; a normal phrase when none is present.

    Every present finding is stated, so the text describes the same label vector as the image (absent labels not
    mentioned are absent, as in a report).

    Args:
        present: labels present in the image.
        absent: labels known to be absent.
        rng: the generator (the caller decides what is reproducible).
        max_absent: at most this many absent labels are negated.

    Returns:
        A lower-case sentence, e.g. ``"there is effusion. cardiomegaly is seen. no pneumothorax."``.
    """
    from cxrfa.labels import display_name

    parts = [str(rng.choice(_STATE_PRESENT)).format(display_name(lab)) for lab in rng.permutation(present)]
    if not present:
        parts.append(str(rng.choice(_STATE_NORMAL)))
    k = int(rng.integers(0, min(max_absent, len(absent)) + 1))
    negated = [
        str(rng.choice(_STATE_ABSENT)).format(display_name(lab)) for lab in rng.permutation(absent)[:k]
    ]
    order = rng.permutation(len(parts) + len(negated))
    both = [*parts, *negated]
    return " ".join(both[i] for i in order)


def varied_label_sentences(
    labels: list[str], matrix: np.ndarray, rng: np.random.Generator, per_row: int
) -> list[list[str]]:
    """``per_row`` :func:`varied_label_sentence` phrasings for each row of a (M, C) 1/0/NaN label matrix
    (unknown labels are neither stated nor negated)."""
    out = []
    for row in matrix:
        present = [lab for lab, v in zip(labels, row, strict=True) if v == 1]
        absent = [lab for lab, v in zip(labels, row, strict=True) if v == 0]
        out.append([varied_label_sentence(present, absent, rng) for _ in range(per_row)])
    return out


def finding_statements(label: str) -> tuple[list[str], list[str]]:
    """Every phrasing of one finding stated (``"there is effusion."``) and negated (``"no effusion."``), in the
    templates of :func:`varied_label_sentence`."""
    from cxrfa.labels import display_name

    name = display_name(label)
    return [t.format(name) for t in _STATE_PRESENT], [t.format(name) for t in _STATE_ABSENT]
