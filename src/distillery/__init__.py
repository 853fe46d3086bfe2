"""distillery: knowledge distillation and self-distillation for PyTorch.

Teachers say who teaches, taps say where signals come from, objectives how they are
compared, weightings how terms are balanced over time; :class:`Distiller` runs one step and
:class:`Trainer` the loop around it. See the README for an example of each teacher kind.
"""

from .batch import BatchView
from .engine.distiller import Distiller, Term
from .engine.trainer import Trainer
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DistilleryError,
    NonFiniteLossError,
    RunDirError,
    ShapeError,
    TapError,
)
from .weighting.gam import GradientGuidedModulation
from .taps import capture
from .teachers import (
    BlackBoxTeacher,
    EMATeacher,
    FrozenTeacher,
    PrivilegedTeacher,
    SelfEnsembleTeacher,
    SnapshotTeacher,
    Teacher,
    TeacherBank,
)
from .weighting import (
    Constant,
    CosineSchedule,
    CosineWarmup,
    GradNormBalancer,
    GroundTruthMix,
    LinearWarmup,
    StepSchedule,
)

__version__ = "0.1.0"

__all__ = [
    "BatchView",
    "Distiller",
    "Term",
    "Trainer",
    "Teacher",
    "FrozenTeacher",
    "BlackBoxTeacher",
    "EMATeacher",
    "SnapshotTeacher",
    "SelfEnsembleTeacher",
    "PrivilegedTeacher",
    "TeacherBank",
    "Constant",
    "LinearWarmup",
    "CosineWarmup",
    "StepSchedule",
    "CosineSchedule",
    "GroundTruthMix",
    "GradNormBalancer",
    "GradientGuidedModulation",
    "capture",
    "DistilleryError",
    "ConfigError",
    "DataError",
    "TapError",
    "ShapeError",
    "NonFiniteLossError",
    "RunDirError",
    "CheckpointError",
]
