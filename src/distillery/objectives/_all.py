# ruff: noqa: F401  (the imports are the public names of distillery.objectives, read lazily)
"""Every objective module, imported: each registers its objectives in ``OBJECTIVES``, and
the public names of :mod:`distillery.objectives` are read from here on first use."""

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

from pathlib import Path as _Path  # noqa: E402

from ..registry import import_submodules as _import_submodules  # noqa: E402

_import_submodules("distillery.objectives", [str(_Path(__file__).parent)])  # modules not imported above
