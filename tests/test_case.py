"""Case model: exact JSON round trips, stable ids, and refusal of untrustworthy files."""

import json
import pickle

import numpy as np
import pytest
from hypothesis import given

from ce_conformance import Case, CaseFormatError
from ce_conformance.case_codec import SCHEMA_VERSION
from ce_conformance.errors import Rule
from ce_conformance.strategies import cross_entropy_cases

BASE = Case.cross_entropy([[0.1, -2.0, 3.5], [1e-3, 7.0, -np.inf]], [2, -100], dtype="bfloat16",
                          weight=[1.0, 0.5, 2.0], label_smoothing=0.2, reduction="none", grad_output=[1.0, -0.5])


@given(cross_entropy_cases(invalid_percent=20))
def test_json_round_trip_is_exact(case):
    loaded = Case.from_json(case.to_json())
    assert loaded == case and loaded.id == case.id
    for name, tensor in case.tensors.items():
        assert loaded.tensors[name].dtype == tensor.dtype
        np.testing.assert_array_equal(loaded.tensors[name].values, tensor.values)
    assert dict(loaded.options) == dict(case.options)
    assert loaded.memory_layout == case.memory_layout and loaded.expected_error == case.expected_error


def test_values_are_rounded_to_the_dtype_on_construction():
    assert BASE.input[0, 0] == np.float64(np.float32(0.10009765625))  # bfloat16(0.1)
    assert Case.from_json(BASE.to_json()).input[0, 0] == BASE.input[0, 0]


def test_large_tensors_use_base64_and_stay_exact():
    rng = np.random.default_rng(1)
    case = Case.cross_entropy(rng.standard_normal((3, 5000)), [1, 2, 3], dtype="float32")
    text = case.to_json()
    assert '"base64"' in text
    np.testing.assert_array_equal(Case.from_json(text).input, case.input)


def test_id_is_stable_and_content_addressed():
    same = Case.cross_entropy(BASE.input, BASE.target, dtype="bfloat16", weight=BASE.weight, label_smoothing=0.2,
                              reduction="none", grad_output=[1.0, -0.5], note="a note does not change the id")
    assert same.id == BASE.id and len(BASE.id) == 16
    assert BASE.replace(options={"reduction": "sum"}, tensors={"grad_output": None}).id != BASE.id


def test_save_and_load(tmp_path):
    path = BASE.save(tmp_path / "case.json")
    assert Case.load(path) == BASE


def _payload():
    return json.loads(BASE.to_json())


def _refused(payload_or_text, field=None):
    text = payload_or_text if isinstance(payload_or_text, (str, bytes)) else json.dumps(payload_or_text)
    with pytest.raises(CaseFormatError) as raised:
        Case.from_json(text)
    if field is not None:
        assert raised.value.field == field, str(raised.value)
        assert field in str(raised.value)
    return raised.value


def test_refuses_pickles():
    error = _refused(pickle.dumps(BASE.to_dict()))
    assert "pickle" in str(error)


def test_refuses_object_payloads():
    payload = _payload()
    payload["py/object"] = "os.system"
    _refused(payload, "py/object")
    payload = _payload()
    payload["tensors"]["input"]["__reduce__"] = ["os.system", ["true"]]
    _refused(payload, "tensors.input.__reduce__")


def test_refuses_wrong_schema_version():
    payload = _payload()
    payload["schema_version"] = SCHEMA_VERSION + 1
    _refused(payload, "schema_version")


def test_refuses_data_that_does_not_fill_the_shape():
    payload = _payload()
    payload["tensors"]["input"]["shape"] = [2, 4]
    _refused(payload, "tensors.input.data")


def test_refuses_mismatched_shapes_in_a_valid_case():
    payload = _payload()
    payload["tensors"]["target"] = {"dtype": "int64", "shape": [3], "data": [0, 1, 2]}
    payload["tensors"].pop("grad_output")
    _refused(payload, "tensors.target.shape")


def test_refuses_grad_output_of_the_wrong_shape():
    payload = _payload()
    payload["tensors"]["grad_output"] = {"dtype": "bfloat16", "shape": [3], "data": [1, 1, 1]}
    _refused(payload, "tensors.grad_output.shape")


def test_refuses_non_integer_index_target():
    payload = _payload()
    payload["tensors"]["target"]["data"] = [1.5, 0]
    error = _refused(payload, "tensors.target.data")
    assert "non-integer" in str(error)


def test_refuses_bad_json_nan_constants_and_wrong_option_types():
    _refused("{not json")
    _refused(BASE.to_json().replace('"-inf"', "-Infinity"))
    payload = _payload()
    payload["options"]["ignore_index"] = "zero"
    _refused(payload, "options.ignore_index")


def test_refuses_an_invalid_case_that_breaks_a_different_rule():
    invalid = Case.cross_entropy([[0.0, 1.0]], [5], expected_error=Rule.WEIGHT_SHAPE)
    with pytest.raises(CaseFormatError) as raised:
        Case.from_json(invalid.to_json())
    assert raised.value.field == "expected_error"


def test_features_describe_the_case():
    assert {"weights", "ignore_index", "label_smoothing", "low_precision", "upstream_gradient",
            "nonfinite_logits"} <= BASE.features
