"""The distillation step: teacher(s) + taps + objectives + weighting.

::

    batch -> views -+-> student(view_s) --taps--> student signals -+
                    +-> teacher(view_t) --taps--> teacher signals -+-> objectives -> weighting -> loss
    after the optimizer step: teacher.update(student); objective state updates (queues, centers)

Example::

    >>> import torch
    >>> from torch import nn
    >>> from distillery import Distiller, Term, FrozenTeacher
    >>> from distillery.objectives import CrossEntropy, SoftTargetKD
    >>> student, teacher = nn.Linear(8, 3), nn.Linear(8, 3)
    >>> distiller = Distiller(student, FrozenTeacher(teacher), [
    ...     Term("ce", CrossEntropy()),
    ...     Term("kd", SoftTargetKD(temperature=4.0), weight=0.9),
    ... ])
    >>> batch = {"x": torch.randn(5, 8), "y": torch.tensor([0, 1, 2, -1, -1])}
    >>> distiller.prepare(batch)
    >>> opt = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1)
    >>> losses = distiller.step(batch)        # {"loss": ..., "ce": ..., "kd": ...}
    >>> losses["loss"].backward(); opt.step(); opt.zero_grad()
    >>> distiller.update()                    # EMA teachers, queues, centers; step += 1
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import taps
from ..taps.adapters import make_adapter
from ..batch import Batch, BatchView, as_batch_view
from ..errors import ConfigError, NonFiniteLossError, ShapeError, TapError
from ..objectives.base import Objective
from ..teachers.base import Teacher
from ..weighting import GradNormBalancer, GroundTruthMix, Schedule, as_schedule

SOURCES = ("student", "teacher", "batch")


@dataclass
class Term:
    """One weighted loss term.

    Args:
        name: the term's name in logs (``ce``, ``kd``, ``feat``).
        objective: the loss module.
        weight: a number or a :class:`~distillery.weighting.Schedule` over optimizer steps.
        inputs: overrides of the objective's default signal references, e.g.
            ``{"student": "student.layers.1.fc", "teacher": "teacher.blocks.2"}``.
        adapter: ``"linear"``, ``"mlp"`` or ``"conv1x1"``: a trainable map applied to the
            ``student`` input so that it takes the ``teacher`` input's shape (built by
            :meth:`Distiller.prepare` from the first batch).
        mix: ground-truth mixing of the ``teacher`` input with ``mix_labels``.
        mix_labels: the signal reference of the labels used by ``mix``.
    """

    name: str
    objective: Objective
    weight: float | Schedule = 1.0
    inputs: dict[str, str] = field(default_factory=dict)
    adapter: str | None = None
    mix: GroundTruthMix | None = None
    mix_labels: str = "batch.y"

    def refs(self) -> dict[str, str]:
        refs = dict(type(self.objective).inputs)
        unknown = set(self.inputs) - set(refs)
        if unknown:
            raise ConfigError(
                f"Term {self.name!r}: objective {type(self.objective).__name__} has no input(s) "
                f"{sorted(unknown)}; its inputs are {sorted(refs)}."
            )
        refs.update(self.inputs)
        return refs


def parse_ref(ref: str, term: str = "") -> tuple[str, str]:
    """``"teacher.layers.1"`` -> ``("teacher", "layers.1")``; checks the source."""
    source, _, name = ref.partition(".")
    if source not in SOURCES or not name:
        where = f" in term {term!r}" if term else ""
        raise ConfigError(
            f"Bad signal reference {ref!r}{where}: write 'student.<signal>', 'teacher.<signal>' "
            "or 'batch.<field>', where a signal is 'logits' or a module path such as 'layers.1.fc'."
        )
    return source, name


class Distiller(nn.Module):
    """Student + teacher + weighted terms; computes the losses of one batch.

    Args:
        student: the network being trained (any ``nn.Module`` taking ``batch["x"]``, or the
            output of ``student_view``).
        teacher: a :class:`~distillery.teachers.Teacher`, or ``None`` (plain training).
        terms: the weighted objectives.
        student_view: how the student's input is made from a batch (a field name, a
            :class:`~distillery.batch.BatchView` with an augmentation, or a callable); default
            ``batch["x"]``.
        teacher_view: the teacher's input when the teacher has no view of its own; default:
            the very tensor the student saw.
        balancer: an optional :class:`~distillery.weighting.GradNormBalancer`.

    ``step(batch)`` returns ``{"loss": total, <term>: value, ...}`` where ``loss`` carries the
    graph and the term values are detached. After the optimizer step call :meth:`update`.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        terms: Sequence[Term] = (),
        *,
        student_view: BatchView | str | Callable | None = None,
        teacher_view: BatchView | str | Callable | None = None,
        balancer: GradNormBalancer | None = None,
    ) -> None:
        super().__init__()
        if not terms:
            raise ConfigError("A distiller needs at least one term (for example cross-entropy or kd).")
        names = [t.name for t in terms]
        if len(set(names)) != len(names) or "loss" in names:
            raise ConfigError(f"Term names must be unique and not 'loss'; got {names}.")
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.bind(student)
        self.terms = list(terms)
        self.objectives = nn.ModuleDict({t.name: t.objective for t in terms})
        self.adapters = nn.ModuleDict()
        self.student_view = as_batch_view(student_view)
        self.teacher_view = as_batch_view(teacher_view)
        self.balancer = balancer
        self.schedules = {t.name: as_schedule(t.weight) for t in terms}
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        self.total_steps: int | None = None
        self.last_weights: dict[str, float] = {}
        self._pending: list[dict[str, dict[str, torch.Tensor]]] = []  # inputs per micro-batch
        self._wrapper: list[nn.Module] = []  # a DDP/FSDP wrapper running the student's forward
        self._prepared = False

        self._refs = {t.name: t.refs() for t in terms}
        for t in terms:
            if t.mix is not None:
                self._refs[t.name]["__mix_labels__"] = t.mix_labels
                if type(t.objective).target_space is None:
                    raise ConfigError(f"Term {t.name!r}: objective {type(t.objective).__name__} does not support ground-truth mixing.")
            if t.adapter is not None and not {"student", "teacher"} <= set(self._refs[t.name]):
                raise ConfigError(f"Term {t.name!r}: an adapter needs both a 'student' and a 'teacher' input.")
        self.student_names = self._names("student")
        self.teacher_names = self._names("teacher")
        if self.teacher_names and teacher is None:
            raise ConfigError(
                f"Terms {[t.name for t in terms if any(r.startswith('teacher.') for r in self._refs[t.name].values())]} "
                "read teacher signals, but no teacher was given."
            )
        self._check_addresses(student, self.student_names, "student")
        if teacher is not None and self.teacher_names:
            self._check_addresses(teacher.tap_model(), self.teacher_names, "teacher")
        self.student_taps = [n for n in self.student_names if n != "logits" and self._is_module(student, n)]
        if balancer is not None:
            missing = ({balancer.task} | set(balancer.ratios)) - set(names)
            if missing:
                raise ConfigError(f"gradnorm names terms {sorted(missing)} that do not exist; terms: {names}.")
            bind = getattr(balancer, "bind", None)
            if callable(bind):  # balancers that watch the distiller's own gradients (GAM)
                bind(self)

    # -- construction helpers -------------------------------------------------------------
    def _names(self, source: str) -> list[str]:
        return _referenced(self._refs, source)

    @staticmethod
    def _is_module(model: nn.Module, name: str) -> bool:
        return taps.split_address(name)[0] in dict(model.named_modules())

    def _check_addresses(self, model: nn.Module | None, names: list[str], owner: str) -> None:
        """Paths that look like module paths must exist (output dict keys are checked later)."""
        members = getattr(self.teacher, "members", None) if owner == "teacher" else None
        for name in names:
            index, sep, member_name = name.partition("/")
            if sep and members is not None and index.isdigit() and int(index) < len(members):
                # "<i>/<signal>": one member of a teacher bank, checked against that member
                self._check_addresses(members[int(index)].tap_model(), [member_name], f"{owner} member {index}")
                continue
            if model is None:
                continue
            if name == "logits" or self._is_module(model, name):
                continue
            if "." in name or name.endswith(taps.INPUT_SUFFIX) or not _may_be_output_key(name):
                taps.resolve(model, taps.split_address(name)[0], owner=owner)

    # -- public API -----------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student, adapter and objective parameters that require gradients (no duplicates).

        A teacher's own network (a separate privileged or self-ensemble model that was not
        frozen) is never trained: its signals are computed without gradients.
        """
        teacher_only: set[int] = set()
        if self.teacher is not None:
            teacher_only = {id(p) for p in self.teacher.parameters()} - {id(p) for p in self.student.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in teacher_only]

    def set_student_wrapper(self, wrapper: nn.Module | None) -> None:
        """Run the student's forward through ``wrapper`` (DistributedDataParallel or FSDP)
        from now on; taps, state dicts and teachers keep addressing the student itself."""
        self._wrapper = [wrapper] if wrapper is not None else []

    def set_total_steps(self, total_steps: int | None) -> None:
        """Tell teachers (EMA momentum schedules) how long the run is."""
        self.total_steps = total_steps
        if self.teacher is not None:
            self.teacher.set_total_steps(total_steps)

    @torch.no_grad()
    def prepare(self, batch: Batch) -> None:
        """Run one batch without gradients: build adapters from the shapes it produces,
        check that every referenced signal exists and that every term can be computed.

        Call it before building the optimizer (the :class:`~distillery.engine.Trainer` does).
        """
        was_training = self.training
        try:
            self._forward_terms(batch, create_adapters=True)
        finally:
            self.train(was_training)
        self._pending.clear()
        self._prepared = True

    def step(self, batch: Batch, *, check_finite: bool = True) -> dict[str, torch.Tensor]:
        """Losses of one batch: ``{"loss": weighted total (with graph), <term>: value}``.

        With ``check_finite`` a non-finite term raises :class:`NonFiniteLossError` here (one
        host sync per step); distributed training checks collectively instead (see
        :meth:`raise_if_not_finite`).
        """
        if not self._prepared:
            self.prepare(batch)
            if len(self.adapters):
                raise ConfigError(
                    "This distiller builds adapters from the first batch; call "
                    "distiller.prepare(batch) before creating the optimizer so that their "
                    "parameters are trained (the Trainer does this for you)."
                )
        step = int(self.global_step)
        values = self._forward_terms(batch)
        weights = {name: self.schedules[name](step) for name in values}
        if self.balancer is not None:
            shared = self._balancer_params()
            weights.update(self.balancer.balance(values, weights[self.balancer.task], shared, step))
        self.last_weights = weights
        products = [weights[n] * v for n, v in values.items()]
        total = products[0]
        for product in products[1:]:
            total = total + product
        # a finite weight times a non-finite term, or a sum with one, is non-finite: one check
        # of the total finds any bad term (then raise_if_not_finite names it)
        if check_finite and not bool(torch.isfinite(total.detach()).all()):
            self.raise_if_not_finite(values, step)
            raise NonFiniteLossError(
                f"The weighted total loss became non-finite at step {step} although every term is finite: "
                f"a weight is not ({weights}). Training stopped; the last good checkpoint is kept."
            )
        out = {"loss": total}
        out.update({n: v.detach() for n, v in values.items()})
        return out

    def term_values(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The unweighted value of every term on one batch, ``{<term>: scalar}``, each with its
        autograd graph (for gradient diagnostics such as
        :func:`distillery.recipes.gam.calibrate_rho`). Nothing else happens: no weighting, no
        step counted, no objective state (queues, centers) queued for :meth:`update`. Call
        :meth:`prepare` first when terms have adapters."""
        values = self._forward_terms(batch)
        self._pending.pop()  # this forward is not a training step: its state updates are dropped
        return values

    def dry_step(self, batch: Batch) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """One batch through student and teacher as :meth:`step` runs it (views, taps, adapters,
        ground-truth mixing), with nothing changed: no weighting, no step counted, no objective
        state (queues, centers) queued for :meth:`update`. Call :meth:`prepare` first.

        Returns ``(signals, values)``: the signals the terms read, ``{"student": {name: tensor},
        "teacher": {name: tensor}}`` (names as in the terms' references, e.g. ``logits``,
        ``blocks.1``), and every term's unweighted value (``distillery validate`` prints both).
        """
        signals: dict[str, dict[str, torch.Tensor]] = {}
        values = self._forward_terms(batch, signals_out=signals)
        self._pending.pop()  # not a training step: its state updates are dropped
        return signals, values

    @staticmethod
    def raise_if_not_finite(values: dict[str, torch.Tensor], step: int, anywhere: bool = False) -> None:
        """Raise :class:`NonFiniteLossError` naming the first non-finite term and the step.

        ``anywhere``: some rank found one (collective check); raise even if these are finite.
        """
        stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()])
        finite = bool(torch.isfinite(stacked).all())
        if finite and not anywhere:
            return
        bad = [n for n, v in zip(values, stacked.tolist()) if not math.isfinite(v)]
        if not bad:
            raise NonFiniteLossError(
                f"A loss term became non-finite on another process at step {step}. Training stopped; "
                "the last good checkpoint is kept."
            )
        raise NonFiniteLossError(
            f"Loss term {bad[0]!r} became {stacked[list(values).index(bad[0])].item()} at step {step} "
            f"(non-finite terms: {bad}). Training stopped; the last good checkpoint is kept. "
            "Lower the learning rate, enable gradient clipping, or check the inputs of this term."
        )

    @torch.no_grad()
    def update(self) -> None:
        """After the optimizer step: move the teacher, update objective state, count the step."""
        self.global_step += 1
        step = int(self.global_step)
        if self.teacher is not None:
            self.teacher.update(self.student, step)
        for micro_batch in self._pending:  # every micro-batch of an accumulated step, in order
            for name, inputs in micro_batch.items():
                self.objectives[name].update(**inputs)
        self._pending.clear()

    # -- internals ------------------------------------------------------------------------
    def _balancer_params(self) -> list[torch.Tensor]:
        prefix = self.balancer.params if self.balancer is not None else ""
        params = [p for n, p in self.student.named_parameters() if p.requires_grad and (not prefix or n == prefix or n.startswith(prefix + "."))]
        if not params:
            raise ConfigError(f"gradnorm: no trainable student parameters under {prefix!r}.")
        return params

    def _forward_terms(
        self, batch: Batch, create_adapters: bool = False, signals_out: dict | None = None
    ) -> dict[str, torch.Tensor]:
        step = int(self.global_step)
        x_s = self.student_view(batch) if self.student_view is not None else batch["x"]
        call = self._wrapper[0] if self._wrapper else None
        s_sig = taps.run_tapped(self.student, x_s, self.student_taps, owner="student", call=call)
        t_sig: dict[str, torch.Tensor] = {}
        if self.teacher is not None and self.teacher_names:
            if self.teacher.view is not None:
                x_t = self.teacher.view(batch)
            elif self.teacher_view is not None:
                x_t = self.teacher_view(batch)
            else:
                x_t = x_s
            with torch.no_grad():
                t_sig = self.teacher.signals(x_t, batch, self.teacher_names)
        signals = {"student": s_sig, "teacher": t_sig, "batch": batch}
        if signals_out is not None:
            signals_out.update(student=s_sig, teacher=t_sig)
        values: dict[str, torch.Tensor] = {}
        pending: dict[str, dict[str, torch.Tensor]] = {}
        for term in self.terms:
            args = {arg: self._lookup(signals, ref, term.name) for arg, ref in self._refs[term.name].items()}
            labels = args.pop("__mix_labels__", None)
            if term.adapter is not None:
                if term.name not in self.adapters:
                    if not create_adapters:
                        raise RuntimeError("adapters must be created in prepare()")
                    adapter = make_adapter(term.adapter, args["student"].shape, args["teacher"].shape, where=f"term {term.name!r}")
                    self.adapters[term.name] = adapter.to(args["student"].device)
                args["student"] = self.adapters[term.name](args["student"])
            elif "student" in args and "teacher" in args and _needs_same_shape(term.objective):
                _check_same_shape(term.name, args["student"], args["teacher"])
            if term.mix is not None:
                args = self._mix(term, args, labels, step)
            term.objective.set_step(step)
            values[term.name] = term.objective(**args)
            if _has_update(term.objective):
                pending[term.name] = {k: v.detach() for k, v in args.items() if isinstance(v, torch.Tensor)}
        self._pending.append(pending)
        return values

    def _mix(self, term: Term, args: dict, labels: torch.Tensor, step: int) -> dict:
        space = type(term.objective).target_space
        temperature = float(getattr(term.objective, "temperature", 1.0))
        mixed = term.mix(args.pop("teacher"), labels, step, space=space, temperature=temperature)
        args["teacher_probs" if space == "logits" else "teacher"] = mixed
        return args

    def _lookup(self, signals: dict, ref: str, term: str) -> torch.Tensor:
        source, name = parse_ref(ref, term)
        found = signals[source]
        if name in found:
            return found[name]
        if source == "batch":
            raise ConfigError(f"Term {term!r} reads {ref!r}, but batches have the fields {sorted(found)}.")
        model = self.student if source == "student" else self.teacher.tap_model()
        paths = taps.module_paths(model) if model is not None else []
        hint = ""
        if name == "logits" and source == "teacher" and getattr(self.teacher, "until", None):
            hint = f" The teacher stops after {self.teacher.until!r}, so it has no logits."
        raise TapError(
            f"Term {term!r} reads {ref!r}, but the {source} produced only the signals "
            f"{sorted(found)}.{hint} Module paths of the {source} include: {', '.join(paths[:12])}"
            f"{' ...' if len(paths) > 12 else ''}."
        )


def _referenced(refs: dict[str, dict[str, str]], source: str) -> list[str]:
    out: list[str] = []
    for term, term_refs in refs.items():
        for ref in term_refs.values():
            src, name = parse_ref(ref, term)
            if src == source and name not in out:
                out.append(name)
    return out


def signal_names(terms: Sequence[Term], source: str) -> list[str]:
    """The signal names that ``terms`` read from ``source`` (``"student"``/``"teacher"``)."""
    refs = {}
    for t in terms:
        refs[t.name] = t.refs()
        if t.mix is not None:
            refs[t.name]["__mix_labels__"] = t.mix_labels
    return _referenced(refs, source)


def _has_update(objective: Objective) -> bool:
    """Whether an objective keeps state updated after the optimizer step."""
    return type(objective).update is not Objective.update


def _may_be_output_key(name: str) -> bool:
    return name.isidentifier()


def _needs_same_shape(objective: Objective) -> bool:
    return type(objective).target_space in ("values", "logits") and getattr(objective, "same_shape", True)


def _check_same_shape(term: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        raise ShapeError(
            f"Term {term!r} compares a student signal of shape {list(student.shape)} with a teacher "
            f"signal of shape {list(teacher.shape)}. Add an adapter to the term (adapter: linear | "
            "mlp | conv1x1) or tap layers whose shapes agree."
        )
