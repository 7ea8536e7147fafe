import pytest

from hf_junkdna import SparsityConfig, SparsityConfigError


def test_defaults():
    config = SparsityConfig()
    assert (config.method, config.sparsity, config.pattern, config.scope) == (
        "magnitude",
        0.5,
        "unstructured",
        "global",
    )
    assert SparsityConfig(method="wanda").scope == "layer"


def test_n_m_fixes_sparsity():
    assert SparsityConfig(pattern="2:4").sparsity == 0.5
    assert SparsityConfig(pattern=" 3 : 8 ").pattern == "3:8"
    assert SparsityConfig(pattern="1:8", sparsity=0.875).n_m == (1, 8)
    with pytest.raises(SparsityConfigError, match="sparsity=0.3 contradicts pattern='2:4'"):
        SparsityConfig(pattern="2:4", sparsity=0.3)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"sparsity": 1.0}, "sparsity=1.0"),
        ({"sparsity": -0.1}, "sparsity=-0.1"),
        ({"sparsity": "half"}, "sparsity='half'"),
        ({"pattern": "4:4"}, "pattern='4:4'"),
        ({"pattern": "0:4"}, "pattern='0:4'"),
        ({"pattern": "5:4"}, "pattern='5:4'"),
        ({"pattern": "blocky"}, "pattern='blocky'"),
        ({"method": "random"}, "method='random'"),
        ({"scope": "row"}, "scope='row'"),
        ({"include": ["("]}, "include"),
        ({"num_calibration_samples": 0}, "num_calibration_samples"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(SparsityConfigError) as error:
        SparsityConfig(**kwargs)
    assert field in str(error.value)


def test_dict_round_trip_and_unknown_keys():
    config = SparsityConfig(method="wanda", pattern="4:8", ignore=["mlp"])
    assert SparsityConfig.from_dict(config.to_dict()) == config
    with pytest.raises(SparsityConfigError, match="unknown SparsityConfig field"):
        SparsityConfig.from_dict({"sparsity": 0.5, "sparsty": 0.2})
