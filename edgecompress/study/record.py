"""One typed record of a trial's user attributes: the bookkeeping a search writes next to the metrics.

Read: `TrialRecord.of(trial)` (a FrozenTrial, an optuna.Trial, or a mapping of user attrs such as a
trial's `user_attrs`) has one typed property per trial attribute of `edgecompress.study.attrs`:

    rec = TrialRecord.of(trial)
    rec.config_hash, rec.latency_source, rec.fidelity ("proxy" when absent), rec.violations ({} when absent)

Write: `TrialRecord.attrs(**fields)` is the user-attrs dict (stored names) for `optuna.trial.create_trial`,
`study.enqueue_trial(user_attrs=...)` or a dict update; `TrialRecord.write(trial, **fields)` sets them on an
optuna Trial. Fields are the property names: `TrialRecord.write(trial, config_hash=h, artefact_dir=str(d))`.

The stored names are spelled once, in edgecompress.study.attrs (tests/test_source_rules_attrs.py keeps it so):
a field's name is its Python identifier, its stored name the attrs constant it is declared with below. A
property of an absent attribute (or of a stored value of the wrong type) is its default: None, or the empty
dict / list / False / DEFAULT_FIDELITY where the search has always read it so. An optuna.Trial's attrs are
read once, when the record is made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from edgecompress.study import attrs as A

T = TypeVar("T")


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():  # a JSON number that went through a float
        return int(v)
    return None


def _dict(v: Any) -> dict | None:
    return dict(v) if isinstance(v, Mapping) else None


def _list(v: Any) -> list | None:
    return list(v) if isinstance(v, (list, tuple)) else None


def _bool(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


class _Attr(Generic[T]):
    """A TrialRecord property: the stored name (an attrs constant), how a stored value reads, its default."""

    def __init__(self, key: str, read: Callable[[Any], T | None], default: Callable[[], T | None] = lambda: None,
                 doc: str = "") -> None:
        self.key, self.read, self.default, self.__doc__ = key, read, default, doc
        self.field = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.field = name

    @overload
    def __get__(self, rec: None, owner: type | None = None) -> _Attr[T]: ...

    @overload
    def __get__(self, rec: TrialRecord, owner: type | None = None) -> T: ...

    def __get__(self, rec: TrialRecord | None, owner: type | None = None) -> Any:
        if rec is None:
            return self
        value = self.read(rec.user_attrs[self.key]) if self.key in rec.user_attrs else None
        return self.default() if value is None else value


@dataclass(frozen=True)
class TrialRecord:
    """The user attributes of one trial, read through typed properties (module docstring)."""

    user_attrs: Mapping[str, Any]

    # the trial attributes, a typed property each (no annotation: not dataclass fields)
    config = _Attr(A.CONFIG, _dict, doc="the CompressionConfig dict")
    config_hash = _Attr(A.CONFIG_HASH, _str)
    state_detail = _Attr(A.STATE_DETAIL, _str, doc="complete | infeasible | failed | pruned | interrupted | died")
    fail_reason = _Attr(A.FAIL_REASON, _str)
    violations = _Attr(A.VIOLATIONS, _dict, dict,
                       doc="{constraint: violation (>0 violated)} as stored ({} when absent)")
    artefact_dir = _Attr(A.ARTEFACT_DIR, _str)
    artefact_uri = _Attr(A.ARTEFACT_URI, _str)
    cached_from = _Attr(A.CACHED_FROM, _int)
    waited_for = _Attr(A.WAITED_FOR, _int)
    claim_note = _Attr(A.CLAIM_NOTE, _str)
    prune_clamped = _Attr(A.PRUNE_CLAMPED, _dict, dict)
    val_curve = _Attr(A.VAL_CURVE, _list, list)
    latency_source = _Attr(A.LATENCY_SOURCE, _str, doc="measured | estimated")
    fidelity = _Attr(A.FIDELITY, _str, lambda: A.DEFAULT_FIDELITY,
                     doc="proxy (search; also when absent) | final (finalize)")
    enqueued = _Attr(A.ENQUEUED, _bool, lambda: False)
    retry_of = _Attr(A.RETRY_OF, _int)
    proxy_trial = _Attr(A.PROXY_TRIAL, _int)
    weights_hash = _Attr(A.WEIGHTS_HASH, _str)

    @classmethod
    def of(cls, trial: Any) -> TrialRecord:
        """The record of a FrozenTrial or optuna.Trial (anything with `user_attrs`), or of a user-attrs mapping."""
        ua = getattr(trial, "user_attrs", trial)
        if not isinstance(ua, Mapping):
            raise TypeError(f"TrialRecord.of: expected a trial or a mapping, got {type(trial).__name__}")
        return cls(ua)

    @classmethod
    def fields(cls) -> dict[str, str]:
        """{field (property name): stored name} of every trial attribute."""
        return {a.field: a.key for a in vars(cls).values() if isinstance(a, _Attr)}

    @classmethod
    def key(cls, field: str) -> str:
        """The stored name of a field."""
        attr = vars(cls).get(field)
        if not isinstance(attr, _Attr):
            raise TypeError(f"TrialRecord has no trial attribute {field!r} (fields: {', '.join(cls.fields())})")
        return attr.key

    @classmethod
    def attrs(cls, **fields: Any) -> dict[str, Any]:
        """The user attrs {stored name: value} of these fields, in the order given (values as given, None too)."""
        return {cls.key(f): v for f, v in fields.items()}

    @classmethod
    def write(cls, trial: Any, **fields: Any) -> None:
        """Set these fields as user attrs of an optuna Trial (`trial.set_user_attr` each, in the order given)."""
        for key, value in cls.attrs(**fields).items():
            trial.set_user_attr(key, value)

    @property
    def metrics(self) -> dict[str, Any]:
        """Every attr that is not bookkeeping (attrs.BOOKKEEPING_ATTRS): the EvalResult metrics, stored flat."""
        return {k: v for k, v in self.user_attrs.items() if k not in A.BOOKKEEPING_ATTRS}

    @property
    def links(self) -> dict[str, Any]:
        """The attrs a re-queued copy of the trial keeps (attrs.LINK_ATTRS) that it has."""
        return {k: self.user_attrs[k] for k in A.LINK_ATTRS if k in self.user_attrs}

    def has(self, field: str) -> bool:
        """Whether the attribute of this field is stored (whatever its value)."""
        return self.key(field) in self.user_attrs
