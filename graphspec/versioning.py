"""Format versions and the migration chain.

The promise (see docs/format.md): a reader of major M reads every minor M.0 .. M.current;
documents of an older major are upgraded through registered one-step migrations
(M-1 -> M, applied in order); a document newer than this release is refused with
a message naming both versions. Nothing is guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import GraphSpecError, Issue

FORMAT_ID = "chainrule.graph"
CURRENT_VERSION: tuple[int, int] = (1, 2)

_VERSION_RE = re.compile(r"(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})")


def format_version(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def parse_version(text: Any) -> tuple[int, int] | None:
    if isinstance(text, str) and (m := _VERSION_RE.fullmatch(text)):
        return int(m.group(1)), int(m.group(2))
    return None


@dataclass(frozen=True)
class Migration:
    """Rewrites a document tree of major ``from_major`` (any minor) into ``from_major + 1``.0."""

    from_major: int
    upgrade: Callable[[dict], dict]
    doc: str


@dataclass
class MigrationRegistry:
    current: tuple[int, int] = CURRENT_VERSION
    migrations: dict[int, Migration] = field(default_factory=dict)

    def register(self, from_major: int, doc: str):
        """Decorator: register the one-step migration ``from_major -> from_major + 1``."""
        if from_major >= self.current[0]:
            raise ValueError(f"cannot migrate from major {from_major}: the current major is {self.current[0]}")

        def wrap(fn: Callable[[dict], dict]) -> Callable[[dict], dict]:
            if from_major in self.migrations:
                raise ValueError(f"a migration from major {from_major} is already registered")
            self.migrations[from_major] = Migration(from_major, fn, doc)
            return fn

        return wrap

    def oldest_major(self) -> int:
        """The oldest major from which an unbroken chain reaches the current one."""
        major = self.current[0]
        while major - 1 in self.migrations:
            major -= 1
        return major

    def supported(self) -> dict:
        cur = self.current
        return {
            "format": FORMAT_ID,
            "current": format_version(cur),
            "reads": [format_version((cur[0], minor)) for minor in range(cur[1] + 1)],
            "migrates_from_majors": list(range(self.oldest_major(), cur[0])),
        }

    def upgrade(self, tree: dict) -> tuple[dict, tuple[int, int]]:
        """Bring a parsed document to the current major; returns it and its original version."""
        fmt = tree.get("format")
        if fmt != FORMAT_ID:
            hint = None if fmt is None else f"this reader reads {FORMAT_ID!r} documents"
            raise GraphSpecError([Issue("not_a_graph", "/format",
                                        f"format must be {FORMAT_ID!r}, got {fmt!r}"[:200], hint)])
        version = parse_version(tree.get("version"))
        if version is None:
            raise GraphSpecError([Issue("invalid_version", "/version",
                                        f"version must be 'MAJOR.MINOR', got {tree.get('version')!r}"[:200])])
        supported = self.supported()
        summary = (f"this release reads {', '.join(supported['reads'])}"
                   + (f" and migrates majors {supported['migrates_from_majors']}"
                      if supported["migrates_from_majors"] else ""))
        if version > self.current:
            raise GraphSpecError([Issue(
                "unsupported_version", "/version",
                f"document version {format_version(version)} is newer than this release supports "
                f"(current format version {format_version(self.current)}; {summary})",
                "upgrade chainrule to read this document")])
        original = version
        while version[0] < self.current[0]:
            step = self.migrations.get(version[0])
            if step is None:
                raise GraphSpecError([Issue(
                    "unsupported_version", "/version",
                    f"document version {format_version(original)} is too old: no migration from "
                    f"major {version[0]} ({summary})")])
            tree = step.upgrade(dict(tree))
            version = (version[0] + 1, 0)
            tree["version"] = format_version(version)
        return tree, original


# The released chain. Major 1 is the first released format, so nothing migrates yet;
# tests exercise the mechanism with registries of their own.
MIGRATIONS = MigrationRegistry()


def supported_versions() -> dict:
    """What this release reads: the current version, the minors it reads, the majors it migrates."""
    return MIGRATIONS.supported()
