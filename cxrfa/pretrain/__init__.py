"""CLIP-style contrastive pretraining on image–report pairs (CheXzero-style), from scratch or from init weights.

The result is an open_clip state_dict, so it loads through the ``clip``/``biomedclip`` encoder path like any
checkpoint (``pretrained: /path/to/file.pt``). Used to make the demo stand-ins and to adapt real CLIP models.
The loop and its scoring are in :mod:`.loop`, the objectives in :mod:`.objectives`, retrieval in
:mod:`.retrieval`.
"""

from cxrfa.pretrain.loop import FINDING_WEIGHT, SENTENCE_SHARE, SENTENCE_VARIANTS, PretrainResult, pretrain
from cxrfa.pretrain.objectives import finding_loss, loss_floor, multi_positive_clip_loss, positive_mask
from cxrfa.pretrain.retrieval import chance_recall, finding_keys, retrieval_recall

__all__ = [
    "FINDING_WEIGHT",
    "SENTENCE_SHARE",
    "SENTENCE_VARIANTS",
    "PretrainResult",
    "chance_recall",
    "finding_keys",
    "finding_loss",
    "loss_floor",
    "multi_positive_clip_loss",
    "positive_mask",
    "pretrain",
    "retrieval_recall",
]
