"""Loss terms ("objectives"), registered in ``OBJECTIVES``.

The objective modules are imported on first use of a name of this package
(``from distillery.objectives import SoftTargetKD``) or of the registry, not by
``import distillery``, which only needs :class:`Objective`.

Each family lives in its own module and offers a pure function (callable on tensors, e.g.
:func:`kd_loss`) and a thin :class:`Objective` subclass registered under a short name:

==================  ======================  ==========================
module              name                    class
==================  ======================  ==========================
``divergence``      ``kd``                  :class:`SoftTargetKD`
``divergence``      ``reverse_kl``          :class:`ReverseKL`
``divergence``      ``jsd``                 :class:`GeneralizedJSD`
``divergence``      ``tvd``                 :class:`TotalVariation`
``divergence``      ``dkd``                 :class:`DKD`
``chunked``         ``chunked_kd``          :class:`ChunkedKD`
``classification``  ``ce``                  :class:`CrossEntropy`
``feature``         ``mse``                 :class:`FeatureMSE`
``feature``         ``cosine``              :class:`FeatureCosine`
``feature``         ``smooth_l1``           :class:`FeatureSmoothL1`
``attention``       ``attention_transfer``  :class:`AttentionTransfer`
``relation``        ``rkd_distance``        :class:`RKDDistance`
``relation``        ``rkd_angle``           :class:`RKDAngle`
``relation``        ``gram_kl``             :class:`SimilarityKL`
``contrastive``     ``infonce``             :class:`InfoNCE`
``contrastive``     ``soft_contrastive``    :class:`SoftContrastive`
``hard_negative``   ``hard_negative_contrast`` :class:`HardNegativeContrast`
``dino``            ``dino``                :class:`DINOLoss`
``cross_level``     ``cross_level_dino``    :class:`CrossLevelDINO`
``joint_label``     ``sla_ce``, ``sla_sd``  :class:`SLACrossEntropy`, :class:`SLASelfDistillation`
``routed``          ``routed_kd``           :class:`RoutedTokenKD`
``topk``            ``kd_topk``             :class:`TopKKD`
``reconstruction``  ``masked_reconstruction`` :class:`MaskedReconstruction`
``normalized_l1``   ``normalized_l1``       :class:`FeatureNormalizedL1`
``segment_replay``  (built in Python)       :class:`SegmentReplay`
``dcd``             ``dcd``, ``pairwise_score_ce`` :class:`DynamicContrastiveDistillation`, :class:`PairwiseScoreCE`
``local_graph``     ``local_graph_kd``      :class:`LocalGraphKD`
``foreground``      ``fg_feature_kd``, ``fg_relation_kd``, ``fg_response_kd``, ``center_focal`` (UniDistill, CenterNet)
``ranking``         ``cotap``               :class:`CoTAP`
==================  ======================  ==========================
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "DKD",
    "REDUCTIONS",
    "AttentionTransfer",
    "ChunkedKD",
    "CrossEntropy",
    "DINOLoss",
    "CrossLevelDINO",
    "FeatureCosine",
    "FeatureMSE",
    "FeatureSmoothL1",
    "GeneralizedJSD",
    "HardNegativeContrast",
    "InfoNCE",
    "MaskedReconstruction",
    "FeatureNormalizedL1",
    "SegmentReplay",
    "MomentumQueue",
    "Objective",
    "RKDAngle",
    "RKDDistance",
    "ReverseKL",
    "SimilarityKL",
    "SoftContrastive",
    "SoftTargetKD",
    "TopKKD",
    "TotalVariation",
    "attention_map",
    "attention_transfer_loss",
    "chunked_kd_loss",
    "cross_entropy_loss",
    "dense_kd_loss",
    "dino_loss",
    "dino_target_statistics",
    "cross_level_dino_loss",
    "hard_negative_contrast_loss",
    "dino_teacher_temperature",
    "dkd_loss",
    "feature_cosine_loss",
    "feature_mse_loss",
    "feature_smooth_l1_loss",
    "infonce_loss",
    "jsd_loss",
    "kd_topk_loss",
    "kd_loss",
    "masked_reconstruction_loss",
    "feature_normalized_l1_loss",
    "segment_replay_loss",
    "pairwise_distances",
    "reverse_kl_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "similarity_kl_loss",
    "soft_contrastive_loss",
    "topk_targets",
    "tvd_loss",
    "CenterFocal",
    "CoTAP",
    "ConfidencePseudoLabel",
    "DynamicContrastiveDistillation",
    "ForegroundFeatureKD",
    "ForegroundRelationKD",
    "ForegroundResponseKD",
    "LocalGraphKD",
    "MaskedTokenFeatureKD",
    "MaskedTokenRelationKD",
    "ObjectAwareFilter",
    "PairwiseScoreCE",
    "RoutedTokenKD",
    "SLACrossEntropy",
    "SLASelfDistillation",
    "TokenFeatureKD",
    "TokenRelationKD",
    "continuous_average_precision",
    "dcd_loss",
    "local_graph_loss",
    "pairwise_score_ce_loss",
    "pseudo_label_loss",
    "token_feature_loss",
    "token_relation_loss",
]


def load() -> None:
    """Import every objective module (each registers itself in ``OBJECTIVES``)."""
    importlib.import_module(".objectives._all", __name__.rsplit(".", 1)[0])


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    all_ = importlib.import_module(f"{__name__}._all")
    try:
        value = getattr(all_, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
