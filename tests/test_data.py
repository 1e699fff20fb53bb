from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fedlearn.data import (
    DataError,
    Dataset,
    Schema,
    dirichlet_partition,
    iid_partition,
    load_bundled,
    load_file,
    write_csv,
)

SCHEMA = Schema(num_features=3, classes=("a", "b", "c"))


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


def test_csv_round_trip_keeps_features_and_labels(tmp_path: Path) -> None:
    data = Dataset(np.arange(12, dtype=np.float32).reshape(4, 3), np.array([0, 1, 2, 1]))
    loaded = load_file(write_csv(tmp_path / "d.csv", data, SCHEMA.classes), SCHEMA)
    np.testing.assert_allclose(loaded.x, data.x)
    np.testing.assert_array_equal(loaded.y, data.y)


def test_csv_label_column_can_be_anywhere_and_renamed(tmp_path: Path) -> None:
    path = _csv(tmp_path, "target,x1,x2,x3\nc,1,2,3\na,4,5,6\n")
    schema = Schema(num_features=3, classes=("a", "b", "c"), label_column="target")
    loaded = load_file(path, schema)
    np.testing.assert_array_equal(loaded.y, [2, 0])
    np.testing.assert_allclose(loaded.x[1], [4, 5, 6])


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("x1,x2,x3,y\n1,2,3,a\n", "label column 'label' not found"),
        ("x1,x2,label\n1,2,a\n", "has 2 feature columns but the run expects 3"),
        ("x1,x2,x3,label\n1,2,3,z\n", "label 'z' in row 0 is not one of the declared classes"),
        ("x1,x2,x3,label\n1,oops,3,a\n", "row 0, column 'x2' is not a number"),
        ("x1,x2,x3,label\n1,2,3\n", "row 0 has 3 fields"),
        ("x1,x2,x3,label\n", "contains no examples"),
        ("", "the file is empty"),
        ("x1,x2,x3,label\n1,nan,3,a\n", "row 0 has a missing or non-finite feature"),
    ],
)
def test_csv_problems_are_named(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        load_file(_csv(tmp_path, text), SCHEMA)


def test_declared_feature_columns_must_exist(tmp_path: Path) -> None:
    schema = Schema(num_features=2, classes=("a", "b"), feature_columns=("x1", "x9"))
    with pytest.raises(DataError, match=r"\['x9'\] declared by the run are missing"):
        load_file(_csv(tmp_path, "x1,x2,label\n1,2,a\n"), schema)


def test_missing_file_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        load_file(tmp_path / "missing.csv", SCHEMA)
    other = tmp_path / "data.parquet"
    other.write_bytes(b"PAR1")
    with pytest.raises(DataError, match="unsupported file type"):
        load_file(other, SCHEMA)


def test_unreadable_csv(tmp_path: Path) -> None:
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(DataError, match="cannot read file"):
        load_file(path, SCHEMA)


def test_npz_images_are_flattened_and_shapes_checked(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((5, 2, 2)), y=np.array([0, 1, 0, 1, 0]))
    loaded = load_file(path, Schema(num_features=4, classes=("0", "1")))
    assert loaded.x.shape == (5, 4)
    with pytest.raises(DataError, match=r"the run expects \(n, 3\)"):
        load_file(path, SCHEMA)
    np.savez(path, x=np.ones((5, 3)))
    with pytest.raises(DataError, match="missing array 'y'"):
        load_file(path, SCHEMA)


def test_npz_with_object_arrays_is_refused_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(DataError, match="object arrays are refused"):
        load_file(path, SCHEMA)


def test_image_folder(tmp_path: Path) -> None:
    for label, value in (("cat", 0), ("dog", 255)):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (8, 8), color=value).save(tmp_path / "imgs" / label / f"{i}.png")
    schema = Schema(num_features=16, classes=("cat", "dog"), image_size=(4, 4))
    loaded = load_file(tmp_path / "imgs", schema)
    assert loaded.x.shape == (4, 16)
    np.testing.assert_array_equal(loaded.y, [0, 0, 1, 1])
    np.testing.assert_allclose(loaded.x[2:], 1.0)
    (tmp_path / "imgs" / "bird").mkdir()
    with pytest.raises(DataError, match=r"sub-folder\(s\) \['bird'\]"):
        load_file(tmp_path / "imgs", schema)


def test_bundled_datasets_are_real_and_scaled() -> None:
    digits, classes = load_bundled("digits")
    assert digits.x.shape == (1797, 64) and classes == tuple(map(str, range(10)))
    assert digits.x.min() >= 0.0 and digits.x.max() <= 1.0
    mnist, _ = load_bundled("mnist")
    assert mnist.x.shape == (5000, 784)
    assert set(np.unique(mnist.y)) == set(range(10))


@settings(max_examples=30, deadline=None)
@given(
    clients=st.integers(1, 12),
    alpha=st.floats(0.1, 10.0),
    seed=st.integers(0, 2**16),
)
def test_dirichlet_partition_is_a_seeded_partition(clients: int, alpha: float, seed: int) -> None:
    labels = np.repeat(np.arange(10), 40)
    parts = dirichlet_partition(labels, num_partitions=clients, alpha=alpha, seed=seed)
    joined = np.concatenate(parts)
    assert len(joined) == len(labels) and len(np.unique(joined)) == len(labels)
    assert min(len(p) for p in parts) >= 10
    again = dirichlet_partition(labels, num_partitions=clients, alpha=alpha, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_small_alpha_is_more_skewed_than_iid() -> None:
    labels = np.repeat(np.arange(10), 100)

    def mean_classes(parts: list[np.ndarray]) -> float:
        return float(np.mean([len(np.unique(labels[p])) for p in parts]))

    skewed = dirichlet_partition(labels, num_partitions=10, alpha=0.1, seed=0)
    iid = iid_partition(labels, num_partitions=10, seed=0)
    assert mean_classes(skewed) < mean_classes(iid) == 10


def test_impossible_partitions_are_refused() -> None:
    with pytest.raises(DataError, match="cannot split"):
        dirichlet_partition(np.zeros(15, dtype=np.int64), num_partitions=2, alpha=1, seed=0)
    with pytest.raises(DataError, match="non-empty"):
        iid_partition(np.zeros(3, dtype=np.int64), num_partitions=4, seed=0)
