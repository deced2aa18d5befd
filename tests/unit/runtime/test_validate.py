"""Request validation (worker/validate.py): JSON values checked and converted per the hint."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
from typing import Any, Dict, List, Literal, NamedTuple, Optional, Tuple, TypedDict, Union

import pydantic
import pytest
from mlbuild_runtime.worker.hints import predict_params
from mlbuild_runtime.worker.validate import InvalidInput, compile_hint, compile_input


def ok(hint, value):
    return compile_hint(hint)(value)


def errors(hint, value):
    with pytest.raises(InvalidInput) as info:
        compile_hint(hint)(value)
    return info.value.detail


def test_scalars():
    assert ok(int, 3) == 3
    assert ok(float, 3) == 3.0 and type(ok(float, 3)) is float  # an int is a valid float
    assert ok(int, 2.0) == 2 and type(ok(int, 2.0)) is int
    assert ok(str, "x") == "x"
    assert ok(bool, False) is False


@pytest.mark.parametrize("hint, value, kind", [
    (int, True, "int_type"),  # bool is not an int
    (float, False, "float_type"),
    (int, 2.5, "int_type"),
    (int, "3", "int_type"),
    (str, 3, "string_type"),
    (bool, 1, "bool_type"),
    (List[int], {"a": 1}, "list_type"),
    (Dict[str, int], [1], "dict_type"),
    (type(None), 0, "none_required"),
])
def test_scalar_errors(hint, value, kind):
    (detail,) = errors(hint, value)
    assert detail["loc"] == ["body"] and detail["type"] == kind
    assert detail["msg"].startswith("Input should be")


def test_nested_error_locations():
    detail = errors(Dict[str, List[int]], {"a": [1, 2], "b": [1, "x", True]})
    assert [(e["loc"], e["type"]) for e in detail] == [
        (["body", "b", 1], "int_type"),
        (["body", "b", 2], "int_type"),
    ]


def test_list_fast_path_returns_same_list_and_slow_path_converts():
    v = [1.0, 2.0]
    assert ok(List[float], v) is v
    assert ok(List[float], [1, 2.5]) == [1.0, 2.5]


def test_tuples_and_sets():
    assert ok(Tuple[int, str], [1, "a"]) == (1, "a")
    assert ok(Tuple[int, ...], [1, 2, 3]) == (1, 2, 3)
    assert errors(Tuple[int, str], [1])[0]["type"] == "too_short"
    assert ok(set[int], [1, 2, 2]) == {1, 2}
    assert ok(frozenset[str], ["a"]) == frozenset({"a"})


def test_optional_and_union():
    assert ok(Optional[int], None) is None
    assert ok(Optional[int], 4) == 4
    assert errors(Optional[int], "x")[0]["loc"] == ["body"]
    assert ok(Union[float, int], 3) == 3 and type(ok(Union[float, int], 3)) is int  # exact wins
    assert ok(Union[int, str], "s") == "s"
    detail = errors(Union[int, List[int]], "s")
    assert {tuple(e["loc"]) for e in detail} == {("body", "int"), ("body", "List[int]")}


def test_literal_and_enum():
    assert ok(Literal["a", "b"], "b") == "b"
    assert errors(Literal["a", "b"], "c")[0]["msg"] == "Input should be 'a' or 'b'"
    assert errors(Literal[1], True)[0]["type"] == "literal_error"  # True == 1 but is no 1

    class Color(enum.Enum):
        RED = "red"

    assert ok(Color, "red") is Color.RED
    assert errors(Color, "green")[0]["type"] == "enum"


def test_strings_to_rich_types():
    assert ok(datetime.datetime, "2024-01-02T03:04:05Z") == datetime.datetime(
        2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert ok(datetime.date, "2024-01-02") == datetime.date(2024, 1, 2)
    assert errors(datetime.date, "yesterday")[0]["type"] == "date_parsing"
    assert ok(decimal.Decimal, 1.5) == decimal.Decimal("1.5")
    assert ok(bytes, "aGk=") == b"hi"
    assert errors(bytes, "not base64!")[0]["type"] == "bytes_type"


class Opts(TypedDict, total=False):
    limit: int


class Query(TypedDict):
    text: str
    opts: Opts


def test_typeddict_missing_and_extra_keys_name_the_field():
    assert ok(Query, {"text": "a", "opts": {}}) == {"text": "a", "opts": {}}
    detail = errors(Query, {"opts": {"limit": "x", "zzz": 1}, "other": 1})
    got = sorted((tuple(e["loc"]), e["type"]) for e in detail)
    assert got == sorted([
        (("body", "text"), "missing"),
        (("body", "opts", "limit"), "int_type"),
        (("body", "opts", "zzz"), "extra_forbidden"),
        (("body", "other"), "extra_forbidden"),
    ])


@dataclasses.dataclass
class Point:
    x: float
    y: float = 0.0

    def __post_init__(self):
        if self.x > 100:
            raise ValueError("x too large")


@dataclasses.dataclass
class Shape:
    points: List[Point]
    name: Optional[str] = None


def test_dataclasses_are_built_and_post_init_errors_are_422():
    shape = ok(Shape, {"points": [{"x": 1}, {"x": 2, "y": 3}]})
    assert shape == Shape(points=[Point(1.0), Point(2.0, 3.0)])
    assert type(shape.points[0].x) is float
    detail = errors(Shape, {"points": [{"x": 101}, {"y": 1}]})
    assert detail == [
        {"loc": ["body", "points", 0], "msg": "Value error, x too large", "type": "value_error"},
        {"loc": ["body", "points", 1, "x"], "msg": "Field required", "type": "missing"},
    ]


@dataclasses.dataclass
class Node:
    value: int
    children: List["Node"] = dataclasses.field(default_factory=list)


def test_recursive_dataclass():
    tree = ok(Node, {"value": 1, "children": [{"value": 2, "children": [{"value": 3}]}]})
    assert tree.children[0].children[0] == Node(3)
    assert errors(Node, {"value": 1, "children": [{"value": "x"}]})[0]["loc"] == [
        "body", "children", 0, "value"]


class Pair(NamedTuple):
    a: int
    b: str = "x"


def test_namedtuple():
    assert ok(Pair, [1]) == Pair(1, "x")
    assert ok(Pair, [1, "y"]) == Pair(1, "y")


class Item(pydantic.BaseModel):
    name: str
    price: float = pydantic.Field(ge=0)


def test_pydantic_v2_errors_become_detail_entries():
    assert ok(List[Item], [{"name": "a", "price": 1}]) == [Item(name="a", price=1.0)]
    detail = errors(List[Item], [{"name": "a", "price": -1}, {"price": 1}])
    assert detail == [
        {"loc": ["body", 0, "price"], "msg": "Input should be greater than or equal to 0",
         "type": "greater_than_equal"},
        {"loc": ["body", 1, "name"], "msg": "Field required", "type": "missing"},
    ]


def test_pydantic_v1_api():
    from pydantic import v1

    class Old(v1.BaseModel):
        a: int

    assert ok(Old, {"a": 1}) == Old(a=1)
    detail = errors(Old, {"a": "x"})
    assert detail[0]["loc"] == ["body", "a"] and detail[0]["type"] == "type_error.integer"


def test_numpy_and_pandas_inputs():
    import numpy as np
    import pandas as pd

    arr = ok(np.ndarray, [[1, 2], [3, 4]])
    assert isinstance(arr, np.ndarray) and arr.shape == (2, 2)
    frame = ok(pd.DataFrame, [{"a": 1}, {"a": 2}])
    assert list(frame["a"]) == [1, 2]
    assert errors(np.ndarray, "x")[0]["type"] == "type_error"


def test_any_and_unhinted_pass_through_untouched():
    v = {"a": [1, {"b": None}]}
    assert ok(Any, v) is v
    assert ok(Dict[str, Any], v) is v

    class Custom:  # a class JSON cannot describe: the raw value goes through
        pass

    assert ok(Custom, v) is v


def test_multi_parameter_input():
    def predict(text: str, k: int = 3, *, flag: bool = False):
        return text

    convert = compile_input(predict_params(predict, skip_first=False)[0])
    assert convert({"text": "a"}) == ((), {"text": "a"})
    assert convert({"text": "a", "k": 2, "flag": True}) == ((), {"text": "a", "k": 2, "flag": True})
    with pytest.raises(InvalidInput) as info:
        convert({"k": "x", "nope": 1})
    assert sorted((tuple(e["loc"]), e["type"]) for e in info.value.detail) == [
        (("body", "k"), "int_type"), (("body", "nope"), "extra_forbidden"),
        (("body", "text"), "missing")]
    with pytest.raises(InvalidInput):
        convert([1])


def test_single_parameter_input_is_the_body_itself():
    def predict(x: List[int]):
        return x

    convert = compile_input(predict_params(predict, skip_first=False)[0])
    assert convert([1, 2]) == (([1, 2],), {})
