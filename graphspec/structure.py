"""A small declarative schema language: one definition, two uses.

Each node both *checks* a parsed JSON/msgpack tree (collecting every problem
with its JSON pointer instead of stopping at the first) and *emits* its JSON
Schema. The document model in :mod:`graphspec.model` is written once in these
terms, so the committed JSON Schema and the Python validator cannot drift apart.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import Issue, did_you_mean, pointer

Issues = list[Issue]


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class Spec:
    """Base of all schema nodes."""

    description: str | None = None

    def check(self, value: Any, loc: str, issues: Issues) -> bool:  # pragma: no cover - abstract
        """Append problems in ``value`` at ``loc`` to ``issues``; return True when none."""
        raise NotImplementedError

    def schema(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _with_doc(self, schema: dict) -> dict:
        if self.description:
            schema["description"] = self.description
        return schema

    def expected(self) -> str:
        return self.schema().get("type", "a valid value")


# Every integer in a document must survive msgpack (64-bit) and a float64 conversion.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def exactly_one_of(*names: str) -> Callable[[dict, str, "Issues"], bool]:
    """An Obj rule: exactly one of ``names`` is present."""

    def rule(value: dict, loc: str, issues: "Issues") -> bool:
        present = [n for n in names if n in value]
        if len(present) == 1:
            return True
        wanted = " or ".join(repr(n) for n in names)
        if present:
            issues.append(Issue("conflicting_fields", loc + pointer(present[1]),
                                f"give exactly one of {wanted}, not both"))
        else:
            issues.append(Issue("missing_field", loc, f"needs exactly one of {wanted}"))
        return False

    return rule


def _wrong_type(value: Any, loc: str, expected: str, issues: Issues) -> bool:
    issues.append(Issue("wrong_type", loc, f"expected {expected}, got {_type_name(value)}"))
    return False


@dataclass
class Str(Spec):
    pattern: str | None = None
    max_length: int | None = None
    min_length: int = 0
    description: str | None = None
    pattern_code: str = "invalid_value"

    def check(self, value, loc, issues):
        if not isinstance(value, str):
            return _wrong_type(value, loc, "string", issues)
        if len(value) < self.min_length:
            issues.append(Issue("invalid_value", loc, f"string must have at least {self.min_length} character(s)"))
            return False
        if self.max_length is not None and len(value) > self.max_length:
            issues.append(Issue("too_large", loc, f"string longer than {self.max_length} characters"))
            return False
        if self.pattern and not re.fullmatch(self.pattern, value):
            issues.append(Issue(self.pattern_code, loc, f"{value[:60]!r} does not match the pattern {self.pattern}"))
            return False
        return True

    def schema(self):
        s: dict = {"type": "string"}
        if self.pattern:
            s["pattern"] = f"^{self.pattern}$"
        if self.min_length:
            s["minLength"] = self.min_length
        if self.max_length is not None:
            s["maxLength"] = self.max_length
        return self._with_doc(s)


@dataclass
class Const(Spec):
    value: Any
    description: str | None = None

    def check(self, value, loc, issues):
        if value != self.value or type(value) is not type(self.value):
            issues.append(Issue("invalid_value", loc, f"expected {self.value!r}, got {value!r}"[:200]))
            return False
        return True

    def schema(self):
        return self._with_doc({"const": self.value})


@dataclass
class Enum(Spec):
    values: tuple
    description: str | None = None
    # Other names people use for some values (alias -> value): only for the did-you-mean hint, the
    # enum accepts exactly ``values`` (one spelling per meaning, so content hashes never split).
    synonyms: dict[str, str] = field(default_factory=dict)

    def check(self, value, loc, issues):
        if not isinstance(value, str) or value not in self.values:
            synonym = self.synonyms.get(value) if isinstance(value, str) else None
            issues.append(Issue(
                "invalid_value", loc,
                f"{value!r} is not one of {', '.join(map(repr, self.values))}"[:300],
                f"did you mean {synonym!r}? It is what the format calls {value!r}" if synonym
                else did_you_mean(value, self.values),
            ))
            return False
        return True

    def schema(self):
        return self._with_doc({"enum": list(self.values)})

    def expected(self):
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass
class Int(Spec):
    minimum: int | None = None
    maximum: int | None = None
    description: str | None = None

    def check(self, value, loc, issues):
        if isinstance(value, bool) or not isinstance(value, int):
            return _wrong_type(value, loc, "integer", issues)
        if not _INT64_MIN <= value <= _INT64_MAX:
            issues.append(Issue("too_large", loc, "integers must fit in 64 bits"))
            return False
        if self.minimum is not None and value < self.minimum:
            issues.append(Issue("invalid_value", loc, f"{value} is below the minimum {self.minimum}"))
            return False
        if self.maximum is not None and value > self.maximum:
            issues.append(Issue("invalid_value", loc, f"{value} is above the maximum {self.maximum}"))
            return False
        return True

    def schema(self):
        s: dict = {"type": "integer"}
        if self.minimum is not None:
            s["minimum"] = self.minimum
        if self.maximum is not None:
            s["maximum"] = self.maximum
        return self._with_doc(s)


@dataclass
class Num(Spec):
    """A finite number (integers accepted); JSON has no NaN or infinity."""

    exclusive_minimum: float | None = None
    description: str | None = None
    minimum: float | None = None
    exclusive_maximum: float | None = None

    def check(self, value, loc, issues):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return _wrong_type(value, loc, "number", issues)
        if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
            issues.append(Issue("too_large", loc, "integers must fit in 64 bits (write a float instead)"))
            return False
        if not math.isfinite(value):
            issues.append(Issue("non_finite", loc, f"number must be finite, got {value}"))
            return False
        if self.exclusive_minimum is not None and value <= self.exclusive_minimum:
            issues.append(Issue("invalid_value", loc, f"{value} must be greater than {self.exclusive_minimum}"))
            return False
        if self.minimum is not None and value < self.minimum:
            issues.append(Issue("invalid_value", loc, f"{value} must be at least {self.minimum}"))
            return False
        if self.exclusive_maximum is not None and value >= self.exclusive_maximum:
            issues.append(Issue("invalid_value", loc, f"{value} must be less than {self.exclusive_maximum}"))
            return False
        return True

    def schema(self):
        s: dict = {"type": "number"}
        if self.exclusive_minimum is not None:
            s["exclusiveMinimum"] = self.exclusive_minimum
        if self.minimum is not None:
            s["minimum"] = self.minimum
        if self.exclusive_maximum is not None:
            s["exclusiveMaximum"] = self.exclusive_maximum
        return self._with_doc(s)


@dataclass
class Bool(Spec):
    description: str | None = None

    def check(self, value, loc, issues):
        if not isinstance(value, bool):
            return _wrong_type(value, loc, "boolean", issues)
        return True

    def schema(self):
        return self._with_doc({"type": "boolean"})


@dataclass
class Null(Spec):
    description: str | None = None

    def check(self, value, loc, issues):
        if value is not None:
            return _wrong_type(value, loc, "null", issues)
        return True

    def schema(self):
        return self._with_doc({"type": "null"})


@dataclass
class Any_(Spec):
    """Free-form JSON (metadata tags); only depth and size limits of the loader apply."""

    description: str | None = None

    def check(self, value, loc, issues):
        return True

    def schema(self):
        return self._with_doc({})


@dataclass
class OneOf(Spec):
    """The first option whose JSON type matches decides; its problems are reported."""

    options: tuple[Spec, ...]
    description: str | None = None

    def check(self, value, loc, issues):
        for option in self.options:
            attempt: Issues = []
            if option.check(value, loc, attempt):
                return True
            if not any(i.code == "wrong_type" and i.location == loc for i in attempt):
                issues.extend(attempt)  # right type, wrong content: that option's story is the useful one
                return False
        expected = " or ".join(option.expected() for option in self.options)
        return _wrong_type(value, loc, expected, issues)

    def schema(self):
        return self._with_doc({"oneOf": [o.schema() for o in self.options]})

    def expected(self):
        return " or ".join(o.expected() for o in self.options)


@dataclass
class List(Spec):
    item: Spec
    min_items: int = 0
    max_items: int | None = None
    unique: bool = False
    description: str | None = None

    def check(self, value, loc, issues):
        if not isinstance(value, list):
            return _wrong_type(value, loc, "array", issues)
        ok = True
        if len(value) < self.min_items:
            issues.append(Issue("invalid_value", loc, f"needs at least {self.min_items} item(s), got {len(value)}"))
            ok = False
        if self.max_items is not None and len(value) > self.max_items:
            issues.append(Issue("too_large", loc, f"at most {self.max_items} items allowed, got {len(value)}"))
            return False
        for i, item in enumerate(value):
            ok = self.item.check(item, loc + pointer(i), issues) and ok
        if ok and self.unique:
            seen = set()
            for i, item in enumerate(value):
                key = repr(item)
                if key in seen:
                    issues.append(Issue("duplicate", loc + pointer(i), f"{item!r} appears more than once"))
                    ok = False
                seen.add(key)
        return ok

    def schema(self):
        s: dict = {"type": "array", "items": self.item.schema()}
        if self.min_items:
            s["minItems"] = self.min_items
        if self.max_items is not None:
            s["maxItems"] = self.max_items
        if self.unique:
            s["uniqueItems"] = True
        return self._with_doc(s)


@dataclass
class Field:
    spec: Spec
    required: bool = False


@dataclass
class Obj(Spec):
    """An object with known fields; unknown fields are errors with a did-you-mean hint."""

    fields: dict[str, Field]
    description: str | None = None
    # Cross-field rule run after the fields check out (e.g. "exactly one of init/value").
    rule: Callable[[dict, str, Issues], bool] | None = None
    extra_schema: dict = field(default_factory=dict)

    def check(self, value, loc, issues):
        if not isinstance(value, dict):
            return _wrong_type(value, loc, "object", issues)
        ok = True
        for key in value:
            if key not in self.fields:
                issues.append(Issue("unknown_field", loc + pointer(key), f"unknown field {key!r}"[:200],
                                    did_you_mean(key, self.fields)))
                ok = False
        for name, f in self.fields.items():
            if name in value:
                ok = f.spec.check(value[name], loc + pointer(name), issues) and ok
            elif f.required:
                issues.append(Issue("missing_field", loc + pointer(name), f"required field {name!r} is missing"))
                ok = False
        if ok and self.rule is not None:
            ok = self.rule(value, loc, issues)
        return ok

    def schema(self):
        s: dict = {
            "type": "object",
            "properties": {name: f.spec.schema() for name, f in self.fields.items()},
            "additionalProperties": False,
        }
        required = [name for name, f in self.fields.items() if f.required]
        if required:
            s["required"] = required
        s.update(self.extra_schema)
        return self._with_doc(s)


@dataclass
class Map(Spec):
    """An object used as a name -> value map; names follow ``key_pattern``."""

    value: Spec
    key_pattern: str
    max_items: int | None = None
    min_items: int = 0
    description: str | None = None

    def check(self, value, loc, issues):
        if not isinstance(value, dict):
            return _wrong_type(value, loc, "object", issues)
        if self.max_items is not None and len(value) > self.max_items:
            issues.append(Issue("too_large", loc, f"at most {self.max_items} entries allowed, got {len(value)}"))
            return False
        ok = True
        if len(value) < self.min_items:
            issues.append(Issue("invalid_value", loc, f"needs at least {self.min_items} entr{'y' if self.min_items == 1 else 'ies'}"))
            ok = False
        for key, item in value.items():
            if not isinstance(key, str) or not re.fullmatch(self.key_pattern, key):
                issues.append(Issue("invalid_name", loc + pointer(str(key)),
                                    f"name {key[:60]!r} does not match the pattern {self.key_pattern}"))
                ok = False
                continue
            ok = self.value.check(item, loc + pointer(key), issues) and ok
        return ok

    def schema(self):
        s: dict = {
            "type": "object",
            "propertyNames": {"pattern": f"^{self.key_pattern}$"},
            "additionalProperties": self.value.schema(),
        }
        if self.min_items:
            s["minProperties"] = self.min_items
        if self.max_items is not None:
            s["maxProperties"] = self.max_items
        return self._with_doc(s)


@dataclass
class Ref(Spec):
    """A reference to a named definition (``$defs``) so the schema stays readable."""

    name: str
    target: Spec

    def check(self, value, loc, issues):
        return self.target.check(value, loc, issues)

    def schema(self):
        return {"$ref": f"#/$defs/{self.name}"}

    def expected(self):
        return self.target.expected()


@dataclass
class Custom(Spec):
    """A leaf whose check is a function (tensors); its JSON Schema is given alongside."""

    checker: Callable[[Any, str, Issues], bool]
    json_schema: dict
    type_name: str = "a valid value"

    def check(self, value, loc, issues):
        return self.checker(value, loc, issues)

    def schema(self):
        return dict(self.json_schema)

    def expected(self):
        return self.type_name


def collect_defs(spec: Spec, defs: dict[str, dict] | None = None) -> dict[str, dict]:
    """All ``Ref`` targets reachable from ``spec``, as ``$defs`` entries."""
    defs = {} if defs is None else defs
    stack = [spec]
    while stack:
        node = stack.pop()
        if isinstance(node, Ref):
            if node.name in defs:
                continue
            defs[node.name] = node.target.schema()
            stack.append(node.target)
            continue
        for child in _children(node):
            stack.append(child)
    return defs


def _children(node: Spec) -> list[Spec]:
    if isinstance(node, Obj):
        return [f.spec for f in node.fields.values()]
    if isinstance(node, (List,)):
        return [node.item]
    if isinstance(node, Map):
        return [node.value]
    if isinstance(node, OneOf):
        return list(node.options)
    return []
