"""Versions: older minors read, older majors migrate, newer versions refused by name."""

from __future__ import annotations

import json

import pytest
from helpers import issues_of

import graphspec
from graphspec.versioning import MigrationRegistry


def test_supported_versions_describe_this_release():
    s = graphspec.supported_versions()
    assert s == {"format": "chainrule.graph", "current": "1.2", "reads": ["1.0", "1.1", "1.2"], "migrates_from_majors": []}


@pytest.mark.parametrize("version", ["2.0", "1.3", "17.3"])
def test_newer_versions_are_refused_naming_both_versions(example_tree, version):
    tree = example_tree("logistic_regression")
    tree["version"] = version
    (issue,) = issues_of(tree)
    assert (issue.code, issue.location) == ("unsupported_version", "/version")
    assert version in issue.message and "1.2" in issue.message
    assert "upgrade" in issue.hint


@pytest.mark.parametrize("version", ["1", "v1.0", "1.0.0", 1.0, None, "01.0"])
def test_malformed_versions(example_tree, version):
    tree = example_tree("logistic_regression")
    tree["version"] = version
    (issue,) = issues_of(tree)
    assert (issue.code, issue.location) == ("invalid_version", "/version")


def test_wrong_format_identifier(example_tree):
    tree = example_tree("logistic_regression")
    tree["format"] = "onnx"
    (issue,) = issues_of(tree)
    assert (issue.code, issue.location) == ("not_a_graph", "/format")


def test_older_minor_is_read_by_a_newer_reader(example_tree):
    registry = MigrationRegistry(current=(1, 3))
    tree = example_tree("logistic_regression")
    tree["version"] = "1.0"
    upgraded, original = registry.upgrade(tree)
    assert original == (1, 0) and upgraded["version"] == "1.0"
    assert registry.supported()["reads"] == ["1.0", "1.1", "1.2", "1.3"]


def test_migration_chain_runs_one_step_at_a_time(example_tree):
    """A test format history: 1.x named node fields 'type'/'args'; 2.x renamed the graph 'title'."""
    registry = MigrationRegistry(current=(3, 0))
    calls = []

    @registry.register(1, "1 -> 2: nodes 'type'/'args' become 'op'/'inputs'")
    def one_to_two(tree):
        calls.append(("1->2", tree["version"]))
        tree["nodes"] = [{"id": n["id"], "op": n["type"], "inputs": n["args"], "attrs": n.get("attrs", {})}
                         for n in tree["nodes"]]
        return tree

    @registry.register(2, "2 -> 3: 'title' becomes 'name'")
    def two_to_three(tree):
        calls.append(("2->3", tree["version"]))
        tree["name"] = tree.pop("title")
        return tree

    old = example_tree("logistic_regression")
    old["version"] = "1.4"
    old["title"] = old.pop("name")
    old["nodes"] = [{"id": n["id"], "type": n["op"], "args": n["inputs"], "attrs": n["attrs"]} for n in old["nodes"]]

    upgraded, original = registry.upgrade(old)
    assert original == (1, 4)
    assert calls == [("1->2", "1.4"), ("2->3", "2.0")]
    assert upgraded["version"] == "3.0"
    assert registry.supported()["migrates_from_majors"] == [1, 2]
    # the migrated tree is a current document again, once its version is the reader's
    upgraded["version"] = "1.0"
    assert graphspec.from_data(upgraded) == graphspec.from_data(example_tree("logistic_regression"))


def test_loader_uses_the_registry_it_is_given(example_tree):
    registry = MigrationRegistry(current=(1, 0))

    @registry.register(0, "0 -> 1: 'graph_name' becomes 'name'")
    def zero_to_one(tree):
        tree["name"] = tree.pop("graph_name")
        return tree

    tree = example_tree("logistic_regression")
    tree["version"] = "0.9"
    tree["graph_name"] = tree.pop("name")
    graph = graphspec.loads(json.dumps(tree), migrations=registry)
    assert graph.name == "logistic_regression" and graph.version == "1.0"
    # the released registry has no such migration: refused, naming what it supports
    (issue,) = issues_of(tree)
    assert issue.code == "unsupported_version" and "0.9" in issue.message and "too old" in issue.message


def test_a_gap_in_the_chain_is_refused(example_tree):
    registry = MigrationRegistry(current=(3, 0))
    registry.register(2, "2 -> 3")(lambda tree: tree)
    tree = example_tree("logistic_regression")
    tree["version"] = "1.0"
    with pytest.raises(graphspec.GraphSpecError) as info:
        registry.upgrade(tree)
    assert "no migration from major 1" in info.value.issues[0].message


def test_registry_refuses_bad_registrations():
    registry = MigrationRegistry(current=(2, 0))
    registry.register(1, "1 -> 2")(lambda t: t)
    with pytest.raises(ValueError):
        registry.register(1, "again")(lambda t: t)
    with pytest.raises(ValueError):
        registry.register(2, "from the current major")
