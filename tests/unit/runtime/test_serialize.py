"""predict's result -> JSON bytes (worker/serialize.py), by duck typing."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import math
import uuid

import numpy as np
import pandas as pd
import pydantic
import pytest
from mlbuild_runtime.worker.serialize import Unserializable, dumps


def rt(obj):
    raw = dumps(obj)
    assert isinstance(raw, bytes)
    return json.loads(raw)  # strict enough: NaN would load, so check separately below


def test_plain_json_is_compact():
    assert dumps({"a": [1, 2.5, "x", None, True]}) == b'{"a":[1,2.5,"x",null,true]}'


def test_non_ascii_is_escaped_and_lone_surrogates_do_not_crash():
    assert json.loads(dumps("héllo \ud800")) == "héllo \ud800"


def test_nan_and_inf_become_null_and_output_is_strict_json():
    raw = dumps({"a": float("nan"), "b": [float("inf"), -float("inf"), 1.0], "c": np.float64("nan")})
    assert b"NaN" not in raw and b"Infinity" not in raw
    assert json.loads(raw) == {"a": None, "b": [None, None, 1.0], "c": None}


def test_numpy_arrays_and_scalars():
    out = rt({"arr": np.arange(3), "m": np.array([[1.5, np.nan]]), "i": np.int64(7),
              "f": np.float32(0.5), "b": np.bool_(True), "k": {np.int64(1): "one"}})
    assert out == {"arr": [0, 1, 2], "m": [[1.5, None]], "i": 7, "f": 0.5, "b": True,
                   "k": {"1": "one"}}


def test_pandas_frames_series_and_missing_markers():
    frame = pd.DataFrame({"a": [1, 2], "t": pd.to_datetime(["2024-01-01", None])})
    out = rt({"frame": frame, "s": pd.Series([1.0, float("nan")]),
              "named": pd.Series({"x": 1, "y": 2}), "na": pd.NA})
    assert out["frame"] == [{"a": 1, "t": "2024-01-01T00:00:00"}, {"a": 2, "t": None}]
    assert out["s"] == [1.0, None]
    assert out["named"] == {"x": 1, "y": 2}
    assert out["na"] is None


@dataclasses.dataclass
class Inner:
    when: datetime.date
    amount: decimal.Decimal


@dataclasses.dataclass
class Outer:
    inner: Inner
    tags: set
    blob: bytes


class Color(enum.Enum):
    RED = "red"


def test_dataclasses_datetimes_decimal_bytes_sets_enums():
    obj = Outer(Inner(datetime.date(2024, 1, 2), decimal.Decimal("1.10")), {"b", "a"}, b"hi")
    assert rt(obj) == {"inner": {"when": "2024-01-02", "amount": "1.10"}, "tags": ["a", "b"],
                       "blob": "aGk="}
    assert rt([Color.RED, (1, 2), frozenset([3]), datetime.datetime(2024, 1, 2, 3, 4)]) == [
        "red", [1, 2], [3], "2024-01-02T03:04:00"]
    u = uuid.UUID(int=1)
    assert rt(u) == str(u)


class Quote(pydantic.BaseModel):
    total: float
    when: datetime.date


def test_pydantic_v2_and_v1_models():
    assert rt(Quote(total=1.5, when=datetime.date(2024, 1, 1))) == {"total": 1.5, "when": "2024-01-01"}
    from pydantic import v1

    class Old(v1.BaseModel):
        n: int
        when: datetime.date

    assert rt([Old(n=1, when=datetime.date(2024, 1, 1))]) == [{"n": 1, "when": "2024-01-01"}]


def test_generators_become_lists():
    assert rt(x * 2 for x in range(3)) == [0, 2, 4]


def test_unserializable_names_the_type_and_path():
    class Opaque:
        pass

    with pytest.raises(Unserializable) as info:
        dumps({"ok": 1, "bad": [1, Opaque()]})
    msg = str(info.value)
    assert "Opaque" in msg and "result['bad'][1]" in msg


def test_circular_structure_is_an_error_not_a_crash():
    a: list = []
    a.append(a)
    with pytest.raises(Unserializable):
        dumps(a)


def test_complex_is_unserializable():
    with pytest.raises(Unserializable, match="complex"):
        dumps(1j)


def test_float_subclass_values_stay_numbers():
    out = rt({"x": np.float64(1.25)})
    assert out == {"x": 1.25} and not math.isnan(out["x"])
