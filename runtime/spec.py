"""The training spec: every training setting, defined once.

A :class:`TrainingSpec` is what a training run is configured with — the optimizer and its
hyperparameters, steps and epochs, batch size, seed, shuffling, reporting, evaluation and
checkpoint cadence, a time limit. Each setting is one dataclass field below, with its
default, bounds and help text in the field's :func:`setting` metadata; the command line's
flags, the Python client's keywords, the HTTP API's request model (and so its OpenAPI
schema), the job resource's ``settings``, the worker and :meth:`runtime.Trainer.from_spec`
are all made from these fields. A new setting is one field here.

    spec = TrainingSpec.from_dict({"optimizer": {"name": "adam"}, "steps": 500, "batch_size": 32})
    trainer = runtime.Trainer.from_spec(graph, spec)
    result = trainer.fit(data, params, **spec.fit_options())

:meth:`TrainingSpec.from_dict` validates everything at once and raises a :class:`SpecError`
whose ``issues`` each carry a JSON-pointer location (``/optimizer/lr``, ``/steps``), the way
the API reports them. :meth:`to_dict` is the stored form: versioned (``"version"``), the
optimizer with every hyperparameter filled in; :meth:`from_stored` reads it back, and reads
the unversioned form jobs were stored in before the spec existed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from graphspec.errors import did_you_mean

from .optim import OPTIMIZERS, make_optimizer, optimizer_defaults
from .schedules import SCHEDULES, Schedule, ScheduleError
from .stopping import StoppingRules

SPEC_VERSION = 2  # 2: the schedule, clipping and early-stopping settings (a version-1 worker must refuse them)
MAX_SEED = 2**63 - 1
GRADIENT_REPORTS = ("norms", "full", "none")


class SpecError(ValueError):
    """Invalid training settings; ``issues`` lists each as ``{"code", "location", "message"}``."""

    def __init__(self, issues: list[dict[str, str]]):
        self.issues = issues
        first = issues[0]
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        super().__init__(f"{first['location'] or '/'}: {first['message']}{more}")


@dataclass(frozen=True)
class Setting:
    """What the surfaces need to know about one field: its help text, bounds and choices, and
    whether only a training *service* has it (the local ``chainrule train`` does not report
    steps to anyone, nor stop at a time limit)."""

    doc: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    service_only: bool = False
    flag: str | None = None  # the command-line flag when it is not --<name-with-dashes>
    kind: type = int  # of an optional setting (default None): int, float or str
    exclusive_minimum: float | None = None  # a float that must be above this
    pattern: str | None = None  # a str setting's form (a regular expression it must match in full)


def setting(default: Any, doc: str, **options: Any) -> Any:
    """A :class:`TrainingSpec` field: its default, and its :class:`Setting` as metadata."""
    return field(default=default, metadata={"setting": Setting(doc, **options)})


@dataclass(frozen=True)
class TrainingSpec:
    """Every training setting (see the module docstring). ``optimizer`` is
    ``{"name": ..., <hyperparameters>}``; hyperparameters left out take the optimizer's
    defaults (:func:`runtime.optimizer_defaults`)."""

    optimizer: Mapping[str, Any] = field(
        default_factory=lambda: {"name": "sgd"},
        metadata={"setting": Setting("the optimizer by name with its hyperparameters, e.g. {\"name\": \"adam\", "
                                     "\"lr\": 0.001}; hyperparameters left out take the optimizer's defaults")})
    steps: int | None = setting(None, "number of updates (training stops at steps or epochs, whichever comes "
                                      "first)", minimum=1)
    epochs: int | None = setting(None, "passes over the training data", minimum=1)
    batch_size: int | None = setting(None, "examples per step; omitted = the whole data set", minimum=1)
    seed: int = setting(0, "seed for the initial parameters and the shuffling", minimum=0, maximum=MAX_SEED)
    shuffle: bool = setting(True, "shuffle the examples every epoch", flag="--no-shuffle")
    report_every: int = setting(1, "record a step entry every this many steps", minimum=1, service_only=True)
    gradients: str = setting("norms", "per step: gradient L2 norms, full gradient tensors as well, or nothing",
                             choices=GRADIENT_REPORTS, service_only=True)
    eval_every: int | None = setting(None, "evaluate on the held-out data every this many steps (and always at "
                                           "the end)", minimum=1)
    checkpoint_every: int | None = setting(None, "checkpoint every this many steps (default: every 100 steps, "
                                                 "written at most every few seconds)", minimum=1)
    time_limit_s: int | None = setting(None, "seconds the job may run (capped by the server's limit)", minimum=1,
                                       service_only=True)
    # -- the learning rate's schedule (runtime.schedules) --
    schedule: str = setting("constant", "how the learning rate changes over the run", choices=SCHEDULES)
    warmup_steps: int | None = setting(None, "ramp the learning rate up linearly over this many updates first",
                                       minimum=1)
    decay_steps: int | None = setting(None, "step: multiply by decay_rate every this many updates; cosine, "
                                            "linear: decay over this many updates (default: the rest of the run)",
                                      minimum=1)
    decay_rate: float | None = setting(None, "step: the factor every decay_steps (default 0.1); exponential: the "
                                             "factor every update", kind=float, exclusive_minimum=0.0, maximum=1.0)
    min_lr: float | None = setting(None, "the lowest learning rate a decaying schedule reaches: cosine and linear "
                                         "end there, step and exponential stop there (default 0)", kind=float,
                                   minimum=0.0)
    # -- gradient clipping --
    clip_norm: float | None = setting(None, "scale the gradients down when their global L2 norm is above this",
                                      kind=float, exclusive_minimum=0.0)
    clip_value: float | None = setting(None, "clip each gradient element to [-clip_value, clip_value]", kind=float,
                                       exclusive_minimum=0.0)
    # -- stopping early --
    patience: int | None = setting(None, "stop when the eval loss has not improved (by min_delta) for this many "
                                         "evaluations", minimum=1)
    min_delta: float | None = setting(None, "how much lower an eval loss must be to count as better (default 0)",
                                      kind=float, minimum=0.0)
    target_loss: float | None = setting(None, "stop once the loss reaches this (the eval loss when evaluating, "
                                              "else the training loss)", kind=float)
    restore_best: bool = setting(False, "end with the parameters of the best evaluation, not the last step's",
                                 flag="--restore-best")
    # -- warm start --
    init_from: str | None = setting(None, "start from the trained parameters of this succeeded job (same tenant; "
                                          "the same parameter names, shapes and dtypes)", kind=str,
                                    pattern=r"job_[0-9a-f]{32}", service_only=True)

    # -- reading -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, prefix: str = "", ignore: tuple[str, ...] = ()) -> "TrainingSpec":
        """Validate ``values`` (the HTTP body's shape: field names, the optimizer as an object)
        and build the spec; every problem is one issue located under ``prefix``. Keys in
        ``ignore`` belong to the caller (a request's ``graph`` and ``data``)."""
        issues: list[dict[str, str]] = []
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known and key not in ignore and key != "version":
                hint = did_you_mean(key, sorted(known))
                issues.append(_issue("unknown_field", f"{prefix}/{key}", f"unknown training setting {key!r}"
                                     + (f" ({hint})" if hint else "") + f"; the settings are {', '.join(sorted(known))}"))
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            value = values[f.name]
            location = f"{prefix}/{f.name}"
            if f.name == "optimizer":
                kwargs["optimizer"] = _optimizer(value, location, issues)
            else:
                kwargs[f.name] = _checked(f, value, location, issues)
        if issues:
            raise SpecError(issues)
        spec = cls(**kwargs)
        if spec.steps is None and spec.epochs is None:
            raise SpecError([_issue("missing_field", f"{prefix}/steps",
                                    "give steps, epochs or both (training stops at whichever comes first)")])
        spec._check_together(prefix)
        return spec

    def _check_together(self, prefix: str) -> None:
        """The rules that tie settings to each other, each located at the setting to change."""
        issues: list[dict[str, str]] = []
        try:
            self.lr_schedule().check(self.optimizer_config()["lr"], None)
        except ScheduleError as exc:
            issues.append(_issue("invalid_value", f"{prefix}/{exc.setting}", str(exc)))
        if self.patience is not None and self.eval_every is None:
            issues.append(_issue("missing_field", f"{prefix}/eval_every", "early stopping (patience) watches the eval "
                                 "loss: give eval_every, and eval data"))
        if self.min_delta is not None and self.patience is None:
            issues.append(_issue("invalid_value", f"{prefix}/min_delta", "min_delta belongs to early stopping: give "
                                 "patience too"))
        if self.restore_best and self.eval_every is None:
            issues.append(_issue("missing_field", f"{prefix}/eval_every", "restore_best keeps the parameters of the "
                                 "best evaluation: give eval_every, and eval data"))
        if issues:
            raise SpecError(issues)

    def lr_schedule(self) -> Schedule:
        """The learning-rate schedule these settings describe (runtime.schedules)."""
        return Schedule(self.schedule, self.warmup_steps or 0, self.decay_steps, self.decay_rate, self.min_lr or 0.0)

    @classmethod
    def from_options(cls, optimizer: str | Mapping[str, Any] = "sgd", **options: Any) -> "TrainingSpec":
        """The keyword form: ``from_options(optimizer="sgd", lr=0.5, momentum=0.9, steps=100)`` —
        setting names, and the optimizer's hyperparameters beside its name (None means not given)."""
        names = {f.name for f in dataclasses.fields(cls)}
        body: dict[str, Any] = {k: v for k, v in options.items() if k in names and v is not None}
        hyper = {k: v for k, v in options.items() if k not in names and v is not None}
        chosen = dict(optimizer) if isinstance(optimizer, Mapping) else {"name": optimizer}
        body["optimizer"] = {**chosen, **hyper}
        return cls.from_dict(body)

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> "TrainingSpec":
        """A spec as :meth:`to_dict` stored it — or as jobs stored it before specs were versioned
        (the same field names; other keys are the service's and are ignored)."""
        version = stored.get("version", 0)
        if not isinstance(version, int) or version > SPEC_VERSION:
            raise SpecError([_issue("unknown_version", "/version",
                                    f"training spec version {version!r} is newer than this chainrule reads "
                                    f"({SPEC_VERSION}): upgrade the worker")])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls.from_dict({k: v for k, v in stored.items() if k in known and v is not None})

    # -- writing -------------------------------------------------------------------------------
    def optimizer_config(self) -> dict[str, Any]:
        """The optimizer's name and every hyperparameter, defaults filled in."""
        return make_optimizer(**self.optimizer).config()

    def to_dict(self) -> dict[str, Any]:
        """The stored form: versioned, every field, the optimizer filled in."""
        out: dict[str, Any] = {"version": SPEC_VERSION}
        for f in dataclasses.fields(self):
            out[f.name] = self.optimizer_config() if f.name == "optimizer" else getattr(self, f.name)
        return out

    def to_body(self) -> dict[str, Any]:
        """The HTTP body's training fields: what differs from the defaults, the optimizer as given."""
        out: dict[str, Any] = {"optimizer": dict(self.optimizer)}
        for f in dataclasses.fields(self):
            if f.name != "optimizer" and getattr(self, f.name) != f.default:
                out[f.name] = getattr(self, f.name)
        return out

    def make_optimizer(self):
        return make_optimizer(**self.optimizer)

    def fit_options(self, *, has_eval_data: bool = True) -> dict[str, Any]:
        """The keywords of :meth:`runtime.Trainer.fit` this spec sets."""
        return {"steps": self.steps, "epochs": self.epochs, "checkpoint_every": self.checkpoint_every,
                "eval_every": self.eval_every if has_eval_data else None, "stopping": self.stopping_rules()}

    def stopping_rules(self) -> StoppingRules:
        """When to stop before steps/epochs run out (runtime.stopping)."""
        return StoppingRules(self.patience, self.min_delta or 0.0, self.target_loss, self.restore_best)


def settings() -> Iterator[tuple[dataclasses.Field, Setting]]:
    """Each field of :class:`TrainingSpec` with its :class:`Setting`, in declaration order."""
    for f in dataclasses.fields(TrainingSpec):
        yield f, f.metadata["setting"]


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _issue(code: str, location: str, message: str) -> dict[str, str]:
    return {"code": code, "location": location, "message": message}


def _checked(f: dataclasses.Field, value: Any, location: str, issues: list) -> Any:
    """``value`` for field ``f``, or None after recording why it is wrong."""
    s: Setting = f.metadata["setting"]
    optional = default_of(f) is None
    if value is None:
        if not optional:
            issues.append(_issue("invalid_value", location, f"{f.name} cannot be null"))
        return None
    kind = type(default_of(f)) if not optional else s.kind
    if kind is str and not s.choices:
        if not isinstance(value, str) or (s.pattern is not None and not re.fullmatch(s.pattern, value)):
            issues.append(_issue("invalid_value", location, f"{f.name} must be a job id (job_ and 32 hex digits), "
                                                            f"got {value!r}"))
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            issues.append(_issue("invalid_type", location, f"{f.name} must be a finite number, got {value!r}"))
        elif s.exclusive_minimum is not None and value <= s.exclusive_minimum:
            issues.append(_issue("too_small", location, f"{f.name} must be above {s.exclusive_minimum:g}, got {value}"))
        elif s.minimum is not None and value < s.minimum:
            issues.append(_issue("too_small", location, f"{f.name} must be at least {s.minimum:g}, got {value}"))
        elif s.maximum is not None and value > s.maximum:
            issues.append(_issue("too_large", location, f"{f.name} must be at most {s.maximum:g}, got {value}"))
        return value
    if kind is bool:
        if not isinstance(value, bool):
            issues.append(_issue("invalid_type", location, f"{f.name} must be true or false, got {value!r}"))
        return value
    if kind is str:
        if value not in (s.choices or ()):
            issues.append(_issue("invalid_value", location, f"{f.name} must be one of {', '.join(s.choices or ())}, "
                                                            f"got {value!r}"))
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        issues.append(_issue("invalid_type", location, f"{f.name} must be an integer, got {value!r}"))
        return value
    if s.minimum is not None and value < s.minimum:
        issues.append(_issue("too_small", location, f"{f.name} must be at least {s.minimum}, got {value}"))
    if s.maximum is not None and value > s.maximum:
        issues.append(_issue("too_large", location, f"{f.name} must be at most {s.maximum}, got {value}"))
    return value


def _optimizer(value: Any, location: str, issues: list) -> dict[str, Any]:
    """The optimizer object, checked by :func:`make_optimizer` (each problem at its hyperparameter)."""
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        issues.append(_issue("invalid_optimizer", location,
                             f"the optimizer is an object with a name ({', '.join(OPTIMIZERS)}) and hyperparameters"))
        return {"name": "sgd"}
    value = dict(value)
    name = value["name"]
    if name not in OPTIMIZERS:
        hint = did_you_mean(name, OPTIMIZERS)
        issues.append(_issue("invalid_optimizer", f"{location}/name", f"unknown optimizer {name!r}"
                             + (f" ({hint})" if hint else "") + f"; choose one of {', '.join(OPTIMIZERS)}"))
        return value
    given = {k: v for k, v in value.items() if k != "name" and v is not None}
    accepted = optimizer_defaults(name)
    for key, hyper in given.items():
        if _too_big(hyper):
            issues.append(_issue("invalid_optimizer", f"{location}/{key}",
                                 "the number is too large to be a hyperparameter"))
            return value
    try:
        make_optimizer(name, **given)
    except (ValueError, TypeError, OverflowError) as exc:
        message = str(exc)
        named = re.match(r"\w+: (\w+)", message)  # "sgd: lr must be ...": located at /optimizer/lr
        unknown = [k for k in given if k not in accepted]
        culprit = unknown[0] if unknown else named.group(1) if named and named.group(1) in given else None
        where = f"{location}/{culprit}" if culprit else location
        issues.append(_issue("invalid_optimizer", where, f"invalid optimizer: {message}"))
    return {"name": name, **given}


def _too_big(value: Any) -> bool:
    """A JSON integer beyond the float range (``1`` and 400 zeros) cannot be a hyperparameter."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, int) and not isinstance(item, bool):
            try:
                float(item)
            except OverflowError:
                return True
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False
