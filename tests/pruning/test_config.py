import numpy as np
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
        ({"num_calibration_samples": 2.5}, "num_calibration_samples=2.5"),
        ({"num_calibration_samples": "2"}, "num_calibration_samples='2'"),
        ({"num_calibration_samples": True}, "num_calibration_samples=True"),
        ({"sparsegpt_block_size": 16.5}, "sparsegpt_block_size=16.5"),
        ({"sparsegpt_block_size": 0}, "sparsegpt_block_size=0"),
        ({"sparsegpt_dampening": float("inf")}, "sparsegpt_dampening=inf"),
        ({"sparsegpt_dampening": float("nan")}, "sparsegpt_dampening=nan"),
        ({"sparsegpt_dampening": 0.0}, "sparsegpt_dampening=0.0"),
        ({"sparsegpt_dampening": "0.01"}, "sparsegpt_dampening='0.01'"),
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


def test_integer_and_dampening_fields_accept_numpy_numbers():
    config = SparsityConfig(
        num_calibration_samples=np.int64(8), sparsegpt_block_size=np.int32(64), sparsegpt_dampening=np.float32(0.5)
    )
    assert (config.num_calibration_samples, config.sparsegpt_block_size, config.sparsegpt_dampening) == (8, 64, 0.5)
    assert type(config.num_calibration_samples) is int and type(config.sparsegpt_dampening) is float
