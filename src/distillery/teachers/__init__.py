"""Teachers: who teaches. Each returns named signals for a batch (see :mod:`.base`).

One module per kind: the teacher class, and the config section that builds it
(``teacher: {kind: ...}``, registered with :meth:`distillery.registry.Registry.builder`).
"""

from .base import Teacher

# The order of these imports is the order in which the kinds register, which is the order
# configs' error messages list them in; a module not imported here registers its kind last
# (see the end of this file). Keep it when sorting imports.
# isort: off
from .frozen import BlackBoxTeacher, FrozenTeacher
from .ema import EMATeacher
from .snapshot import SnapshotTeacher
from .voting import VotingSnapshotTeacher
from .ensemble import SelfEnsembleTeacher
from .privileged import PrivilegedTeacher
from .bank import TeacherBank
from .anchored import AnchoredTeacher
from .cached import CachedTeacher
from .tta import DenseTTATeacher
from .precomputed import PrecomputedTeacher
# isort: on

__all__ = [
    "Teacher",
    "FrozenTeacher",
    "BlackBoxTeacher",
    "EMATeacher",
    "SnapshotTeacher",
    "VotingSnapshotTeacher",
    "SelfEnsembleTeacher",
    "PrivilegedTeacher",
    "TeacherBank",
    "PrecomputedTeacher",
    "CachedTeacher",
    "AnchoredTeacher",
    "DenseTTATeacher",
]

from ..registry import import_submodules as _import_submodules  # noqa: E402

_import_submodules(__name__, __path__)  # teacher kinds of modules not imported above
