from pathlib import Path

import pytest

from fedlearn.config import ConfigError, RunConfig


def test_defaults_are_valid_and_round_trip_through_json() -> None:
    cfg = RunConfig()
    assert RunConfig.from_json(cfg.to_json()) == cfg


def test_toml_file_is_read_with_kebab_case_keys(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        "[federation]\nrounds = 3\nmin-train-clients = 2\n"
        '[data]\ndataset = "files"\nnum-features = 4\nclasses = [0, 1]\n'
        "[train]\nlearning-rate = 1\n"
    )
    cfg = RunConfig.load(path)
    assert cfg.federation.rounds == 3
    assert cfg.data.classes == ("0", "1")
    assert cfg.train.learning_rate == 1.0


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"federation": {"rounds": 0}}, "federation.rounds"),
        ({"federation": {"fraction-train": 1.5}}, "federation.fraction-train"),
        ({"federation": {"clients": 3, "min-train-clients": 4}}, "federation.min-train-clients"),
        ({"federation": {"roundz": 3}}, "unknown key"),
        ({"federaton": {}}, "unknown section"),
        ({"federation": {"rounds": "3"}}, "expected int"),
        ({"data": {"dataset": "imagenet"}}, "data.dataset"),
        ({"data": {"dataset": "files", "classes": ["a", "b"]}}, "data.num-features"),
        ({"data": {"dataset": "files", "num-features": 3, "classes": ["a"]}}, "data.classes"),
        ({"data": {"alpha": 0}}, "data.alpha"),
        ({"train": {"learning-rate": -0.1}}, "train.learning-rate"),
        ({"model": {"name": "resnet"}}, "model.name"),
        ({"privacy": {"target-epsilon": 0}}, "privacy.target-epsilon"),
        ({"privacy": {"delta": 1.0}}, "privacy.delta"),
        ({"privacy": {"delta": 0}}, "privacy.delta"),
        ({"privacy": {"max-grad-norm": -1}}, "privacy.max-grad-norm"),
        ({"privacy": {"central-clipping-norm": 0}}, "privacy.central-clipping-norm"),
        ({"privacy": {"central-dp": "local"}}, "privacy.central-dp"),
        ({"privacy": {"accountant": "moments"}}, "privacy.accountant"),
    ],
)
def test_invalid_values_fail_eagerly_naming_the_key(raw: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        RunConfig.from_dict(raw)


def test_missing_and_malformed_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        RunConfig.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation\nrounds=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        RunConfig.load(bad)
