"""Type hints -> JSON Schema (worker/schema.py)."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
from typing import Any, Dict, List, Literal, NamedTuple, Optional, Tuple, TypedDict, Union

import pydantic
import pytest
from mlbuild_runtime.worker.hints import predict_params
from mlbuild_runtime.worker.schema import hint_schema, input_schema, output_schema


def inp(func):
    params, _ = predict_params(func, skip_first=False)
    return input_schema(params)


@pytest.mark.parametrize(
    "hint, expected",
    [
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (str, {"type": "string"}),
        (bool, {"type": "boolean"}),
        (None, {"type": "null"}),
        (Any, {}),
        (List[int], {"type": "array", "items": {"type": "integer"}}),
        (list[str], {"type": "array", "items": {"type": "string"}}),
        (list, {"type": "array"}),
        (Dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
        (dict[str, Any], {"type": "object"}),
        (Tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
        (tuple[int, str], {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
                           "minItems": 2, "maxItems": 2}),
        (Optional[int], {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
        (Union[int, str], {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
        (int | None, {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
        (Union[int, Any], {}),
        (Literal["a", "b"], {"enum": ["a", "b"], "type": "string"}),
        (Literal[3], {"const": 3, "type": "integer"}),
        (set[int], {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}),
        (datetime.date, {"type": "string", "format": "date"}),
        (bytes, {"type": "string", "contentEncoding": "base64"}),
    ],
)
def test_basic_hints(hint, expected):
    assert hint_schema(hint) == expected


def test_enum_class():
    class Color(enum.Enum):
        RED = "red"
        BLUE = "blue"

    assert hint_schema(Color) == {"title": "Color", "enum": ["red", "blue"], "type": "string"}


class Opts(TypedDict, total=False):
    limit: int


class Query(TypedDict):
    text: str
    opts: Opts


def test_typeddict_required_and_optional_keys_inlined():
    s = hint_schema(Query)
    assert s["title"] == "Query" and s["type"] == "object"
    assert s["required"] == ["text", "opts"]
    assert s["properties"]["text"] == {"type": "string"}
    inner = s["properties"]["opts"]
    assert inner["title"] == "Opts" and "required" not in inner
    assert inner["properties"] == {"limit": {"type": "integer"}}
    assert "$defs" not in s  # nothing recursive: everything is inlined


@dataclasses.dataclass
class Point:
    x: float
    y: float = 0.0
    label: Optional[str] = None
    tags: List[str] = dataclasses.field(default_factory=list)


def test_dataclass_required_from_defaults_input_vs_output():
    s = hint_schema(Point, "input")
    assert s["required"] == ["x"]
    assert s["properties"]["y"] == {"type": "number", "default": 0.0}
    assert s["additionalProperties"] is False
    out = hint_schema(Point, "output")
    assert out["required"] == ["x", "y", "label", "tags"]  # an output always has every field


@dataclasses.dataclass
class Node:
    value: int
    children: List["Node"] = dataclasses.field(default_factory=list)


def test_recursive_dataclass_keeps_defs_and_ref():
    s = hint_schema(List[Node])
    assert s["type"] == "array" and s["items"] == {"$ref": "#/$defs/Node"}
    node = s["$defs"]["Node"]
    assert node["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}


class Pair(NamedTuple):
    a: int
    b: str = "x"


def test_namedtuple_is_prefix_array():
    s = hint_schema(Pair)
    assert s["prefixItems"] == [{"type": "integer"}, {"type": "string"}]
    assert (s["minItems"], s["maxItems"]) == (1, 2)


class Item(pydantic.BaseModel):
    name: str
    qty: int = 1


class Basket(pydantic.BaseModel):
    items: List[Item]
    note: Optional[str] = None


def test_pydantic_v2_model_nested_defs_are_inlined():
    s = hint_schema(Basket)
    assert s["title"] == "Basket"
    item = s["properties"]["items"]["items"]
    assert item["title"] == "Item" and item["required"] == ["name"]
    assert "$ref" not in json.dumps(s)


def test_pydantic_v1_api_via_pydantic_v1_module():
    from pydantic import v1

    class OldPlain(v1.BaseModel):
        a: int
        b: str = "x"

    s = hint_schema(OldPlain)
    assert s["title"] == "OldPlain" and s["required"] == ["a"]
    assert s["properties"]["a"]["type"] == "integer"


def test_input_of_class_method_skips_self_and_multi_params_make_an_object():
    class Model:
        def predict(self, text: str, k: int = 3) -> List[str]:
            return []

    params, ret = predict_params(Model.predict, skip_first=True)
    s = input_schema(params)
    assert s == {
        "type": "object",
        "properties": {"text": {"type": "string"}, "k": {"type": "integer"}},
        "required": ["text"],
        "additionalProperties": False,
    }
    assert output_schema(ret) == {"type": "array", "items": {"type": "string"}}


def test_no_hints_means_any_json():
    def predict(x):
        return x

    assert inp(predict) == {}
    assert output_schema(predict_params(predict, skip_first=False)[1]) == {}


def test_unresolvable_forward_ref_degrades_to_any():
    def predict(x: "DoesNotExist", y: int) -> "AlsoMissing":  # noqa: F821
        return x

    params, ret = predict_params(predict, skip_first=False)
    s = input_schema(params)
    assert s["properties"] == {"x": {}, "y": {"type": "integer"}}
    assert output_schema(ret) == {}


def test_numpy_and_pandas_hints():
    import numpy as np
    import pandas as pd

    assert hint_schema(np.ndarray) == {"type": "array"}
    assert hint_schema(pd.DataFrame, "output") == {"type": "array", "items": {"type": "object"}}


def test_schemas_are_json_serializable():
    for hint in (Basket, Query, Point, List[Node], Pair, Optional[Dict[str, List[int]]]):
        json.dumps(hint_schema(hint))
