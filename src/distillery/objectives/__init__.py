"""Loss terms ("objectives"): importing this package registers them all in ``OBJECTIVES``.

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

from .attention import AttentionTransfer, attention_map, attention_transfer_loss
from .base import REDUCTIONS, Objective
from .chunked import ChunkedKD, chunked_kd_loss, dense_kd_loss
from .classification import CrossEntropy, cross_entropy_loss
from .contrastive import (
    InfoNCE,
    MomentumQueue,
    SoftContrastive,
    infonce_loss,
    soft_contrastive_loss,
)
from .cross_level import (  # registers "cross_level_dino" (CMD)
    CrossLevelDINO,
    cross_level_dino_loss,
)
from .dcd import (  # registers "dcd", "pairwise_score_ce" (DCD)
    DynamicContrastiveDistillation,
    PairwiseScoreCE,
    dcd_loss,
    pairwise_score_ce_loss,
)
from .dino import DINOLoss, dino_loss, dino_target_statistics, dino_teacher_temperature
from .divergence import (
    DKD,
    GeneralizedJSD,
    ReverseKL,
    SoftTargetKD,
    TotalVariation,
    dkd_loss,
    jsd_loss,
    kd_loss,
    reverse_kl_loss,
    tvd_loss,
)
from .feature import (
    FeatureCosine,
    FeatureMSE,
    FeatureSmoothL1,
    feature_cosine_loss,
    feature_mse_loss,
    feature_smooth_l1_loss,
)
from .foreground import (  # UniDistill; "center_focal"
    CenterFocal,
    ForegroundFeatureKD,
    ForegroundRelationKD,
    ForegroundResponseKD,
)
from .hard_negative import HardNegativeContrast, hard_negative_contrast_loss
from .joint_label import (  # registers "sla_ce", "sla_sd"
    SLACrossEntropy,
    SLASelfDistillation,
)
from .local_graph import (  # registers "local_graph_kd" (PointDistiller)
    LocalGraphKD,
    local_graph_loss,
)
from .normalized_l1 import (  # registers "normalized_l1" (DMAE)
    FeatureNormalizedL1,
    feature_normalized_l1_loss,
)
from .pseudo_label import (  # registers "pseudo_label" (FixMatch)
    ConfidencePseudoLabel,
    pseudo_label_loss,
)
from .ranking import (  # registers "cotap" (CoTAP)
    CoTAP,
    ObjectAwareFilter,
    continuous_average_precision,
)
from .reconstruction import MaskedReconstruction, masked_reconstruction_loss
from .relation import (
    RKDAngle,
    RKDDistance,
    SimilarityKL,
    pairwise_distances,
    rkd_angle_loss,
    rkd_distance_loss,
    similarity_kl_loss,
)
from .routed import RoutedTokenKD  # registers "routed_kd" (LinguDistill)
from .segment_replay import (  # PPCL interval replay (built in Python)
    SegmentReplay,
    segment_replay_loss,
)
from .token_relation import (  # registers token_relation, masked_token_relation, masked_token_feature (Hybrid Distill)
    MaskedTokenFeatureKD,
    MaskedTokenRelationKD,
    TokenFeatureKD,
    TokenRelationKD,
    token_feature_loss,
    token_relation_loss,
)
from .topk import TopKKD, kd_topk_loss, topk_targets

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

from ..registry import import_submodules as _import_submodules  # noqa: E402

_import_submodules(__name__, __path__)  # registers objectives of modules not imported above
