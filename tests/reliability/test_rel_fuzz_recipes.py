"""Issue 8, point 4 (the parts tests/test_fuzz.py does not cover): hypothesis fuzzing of the merge
recipe loader (`load_recipe`) and the training config loader (`load_train_config`), from raw
YAML text and from near-valid documents (known keys, random values, random dotted overrides).
The only exceptions allowed are BabeloraError subclasses, each with a one-line message."""

from __future__ import annotations

import dataclasses
import types
import typing

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from babelora.errors import BabeloraError
from babelora.merging.recipe import ExpandSpec, InputSpec, OutputSpec, Override, Recipe, load_recipe
from babelora.train.config import TrainConfig, load_train_config

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 5000)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=10)
    | st.sampled_from(["lors", "ties", "lora", "full", "de", "[1, 2]", "1e-3"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def typed(hint, depth: int) -> st.SearchStrategy:
    """Values of the declared type (the checks behind the type checks get exercised too)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return near_valid(hint, depth + 1) if depth < 2 else values
    if origin in (typing.Union, types.UnionType):
        return st.one_of([typed(a, depth) for a in args])
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (list, tuple):
        return st.lists(typed(args[0] if args else typing.Any, depth), max_size=3)
    if origin is dict:
        return st.dictionaries(st.text(max_size=6), typed(args[1], depth), max_size=3)
    simple = {
        bool: st.booleans(),
        int: st.integers(-2, 3000),
        float: st.floats(-1e3, 1e3) | st.sampled_from([0.0, 1.0, float("nan"), float("inf")]),
        str: st.text(max_size=8) | st.sampled_from(NAMES),
        type(None): st.none(),
    }
    return simple.get(hint, values)


NAMES = ["lors", "ties", "dare", "average", "task_arithmetic", "lora", "full", "de", "en", "*"]


def near_valid(cls, depth: int = 0) -> st.SearchStrategy:
    """Mappings over `cls`'s real keys (nested dataclasses recursed) with values of the right
    type most of the time, random ones otherwise, and now and then an unknown key."""
    hints = typing.get_type_hints(cls)
    fields = {}
    for name in field_names(cls):
        right = typed(hints[name], depth)
        fields[name] = st.integers(0, 4).flatmap(lambda i, r=right: r if i else values)
    known = st.fixed_dictionaries({}, optional=fields)
    unknown = st.fixed_dictionaries({}, optional={**fields, "unknown_key": values})
    return st.integers(0, 4).flatmap(lambda i: known if i else unknown)


def overrides_for(cls) -> st.SearchStrategy:
    dotted = [f"{a}.{b}" for a, sub in _sections(cls) for b in field_names(sub)]
    dotted += field_names(cls) + ["nope.key", "", "="]
    key = st.sampled_from(dotted)
    raw = st.text(max_size=12) | st.sampled_from(["null", "[a, b]", "{x: 1}", "1", "true", "-1"])
    item = st.builds(lambda k, v: f"{k}={v}", key, raw) | st.text(max_size=12)
    return st.lists(item, max_size=3)


def _sections(cls):
    hints = typing.get_type_hints(cls)
    for name in field_names(cls):
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            yield name, hint
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                yield name, arg


LOADERS = {"recipe": (load_recipe, Recipe), "train": (load_train_config, TrainConfig)}


def check(loader, path, overrides=()) -> None:
    """Any exception but a BabeloraError with a one-line message (a raw yaml.YAMLError
    included) fails the test."""
    try:
        loader(path, list(overrides))
    except BabeloraError as err:
        assert "\n" not in str(err).strip(), str(err)


def write_yaml(path, doc) -> bool:
    """Write `doc` as YAML; False when PyYAML cannot represent it (nothing to load then).
    Only the writing may raise yaml.YAMLError here: the loader's errors go to `check`."""
    try:
        text = yaml.safe_dump(doc)
    except yaml.YAMLError:
        return False
    path.write_text(text, encoding="utf-8")
    return True


YAML_BITS = ["a: [", "- x", ": :", "&a", "*b", "!!python/object/apply:os.system ['true']", "{"]
YAML_BITS += ["\t", "key: |", "  - 1", "---", "%YAML 1.1", "seed: 1", "inputs:\n - path: x", "\n"]
yaml_like = st.lists(st.sampled_from(YAML_BITS) | st.text(max_size=5), max_size=8).map("".join)


@FUZZ
@given(
    which=st.sampled_from(sorted(LOADERS)),
    text=yaml_like
    | st.text(max_size=200)
    | st.binary(max_size=120).map(lambda b: b.decode("latin-1")),
)
def test_raw_text(tmp_path_factory, which, text):
    path = tmp_path_factory.mktemp("raw") / "c.yaml"
    path.write_text(text, encoding="utf-8")
    check(LOADERS[which][0], path)


@FUZZ
@given(doc=near_valid(Recipe), overrides=overrides_for(Recipe))
def test_near_valid_recipes(tmp_path_factory, doc, overrides):
    path = tmp_path_factory.mktemp("recipe") / "r.yaml"
    if write_yaml(path, doc):
        check(load_recipe, path, overrides)


@FUZZ
@given(doc=near_valid(TrainConfig), overrides=overrides_for(TrainConfig))
def test_near_valid_train_configs(tmp_path_factory, doc, overrides):
    path = tmp_path_factory.mktemp("train") / "t.yaml"
    if write_yaml(path, doc):
        check(load_train_config, path, overrides)


def test_the_strategies_reach_the_nested_specs():
    """Sanity: the near-valid strategy builds input/output/override/expand sections."""
    assert {name for name, _ in _sections(Recipe)} >= {"inputs", "overrides", "output", "expand"}
    assert {InputSpec, OutputSpec, Override, ExpandSpec} <= {c for _, c in _sections(Recipe)}
    assert {name for name, _ in _sections(TrainConfig)} >= {"model", "data", "optim", "recipe"}
