"""The data of an experiment spec: the training and test subsets it selects, loaded once per
process (the runner and its workers call :func:`load_data`), and their content key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from ..data.dataset import fingerprint
from ..errors import UnlearnableError
from .cache import content_key


# -- data -------------------------------------------------------------------------------------
@dataclass
class Data:
    """The training and test subsets a spec selects, and their identity."""

    train: object
    test: object
    name: str
    key: str


_DATA_CACHE: dict = {}


def resolve_data_name(name: str, base_dir: str) -> str:
    """A relative data path is looked up beside the config file first, then in the cwd."""
    if name == "fashion-mnist" or name.startswith("fashion-mnist:") or Path(name).is_absolute():
        return name
    beside = Path(base_dir) / name
    return str(beside) if beside.exists() else name


def load_data(spec_data: dict) -> Data:
    """Load and subset the data of a spec (cached per process: workers call this too).

    ``spec_data`` is the spec's data section plus ``base_dir``; the key depends on the
    name as written, the subset settings and the selected images, not on ``base_dir``.
    """
    spec_data = dict(spec_data)
    name = resolve_data_name(spec_data["name"], spec_data.pop("base_dir", "."))
    stamp = None  # a file replaced on disk is read again
    if Path(name).exists():
        st = Path(name).stat()
        stamp = (st.st_mtime_ns, st.st_size)
    ck = (tuple(sorted(spec_data.items())), name, stamp)
    if ck in _DATA_CACHE:
        return _DATA_CACHE[ck]
    from ..data import load_dataset
    splits = load_dataset(name)
    if splits.test is None:
        raise UnlearnableError(f"data {spec_data['name']}: no test split; victims are scored on clean test data")
    splits.check_compatible()
    seed = spec_data["seed"]
    train = splits.train.stratified_subset(spec_data["subset"], seed) if spec_data["subset"] else splits.train
    test = splits.test.stratified_subset(spec_data["test_subset"], seed) if spec_data["test_subset"] else splits.test
    key = content_key("data", spec=spec_data, fingerprint=fingerprint(train.images, train.labels, test.images,
                                                                       test.labels), classes=train.class_names)
    data = Data(train, test, str(splits.name), key)
    _DATA_CACHE[ck] = data
    return data
