import pytest

from busi_web.specs import BackboneSpec, InvalidParameters, Param


def make_spec():
    return BackboneSpec(
        name="demo", title="Demo", description="d", target_layer="features",
        factory=lambda num_classes, in_channels, **p: dict(num_classes=num_classes, in_channels=in_channels, **p),
        params=(
            Param("depth", "int", 3, minimum=1, maximum=8),
            Param("rate", "float", 0.5, minimum=0, maximum=1),
            Param("placement", "choice", "end", choices=("end", "blocks")),
            Param("flag", "bool", False),
            Param("weights", "path", None),
        ),
    )


def test_defaults_and_coercion_from_form_strings():
    spec = make_spec()
    assert spec.validate({}) == {"depth": 3, "rate": 0.5, "placement": "end", "flag": False, "weights": None}
    got = spec.validate({"depth": "5", "rate": "0.25", "placement": "blocks", "flag": "on", "weights": "/w.pt"})
    assert got == {"depth": 5, "rate": 0.25, "placement": "blocks", "flag": True, "weights": "/w.pt"}


@pytest.mark.parametrize("values, field, words", [
    ({"depth": "two"}, "depth", "whole number"),
    ({"depth": 2.5}, "depth", "whole number"),
    ({"depth": 9}, "depth", "at most 8"),
    ({"rate": "nan"}, "rate", "finite"),
    ({"rate": -1}, "rate", "at least 0"),
    ({"placement": "middle"}, "placement", "one of: end, blocks"),
    ({"flag": "maybe"}, "flag", "true or false"),
    ({"dpeth": 3}, "dpeth", "unknown parameter"),
])
def test_bad_values_name_the_field(values, field, words):
    with pytest.raises(InvalidParameters) as info:
        make_spec().validate(values)
    assert field in info.value.errors
    assert words in info.value.errors[field]
    assert "demo" in str(info.value)


def test_build_passes_validated_values_and_extras():
    built = make_spec().build({"depth": "4"}, num_classes=3, in_channels=1)
    assert built["depth"] == 4 and built["num_classes"] == 3 and built["in_channels"] == 1


def test_to_dict_is_json_ready():
    import json

    d = make_spec().to_dict()
    json.dumps(d)
    assert d["kind"] == "backbone" and d["target_layer"] == "features"
    assert [p["name"] for p in d["params"]] == ["depth", "rate", "placement", "flag", "weights"]


def test_choice_param_requires_choices():
    with pytest.raises(ValueError):
        Param("x", "choice", None)
    with pytest.raises(ValueError):
        Param("x", "colour", None)
