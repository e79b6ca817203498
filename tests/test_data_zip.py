"""Datasets read out of zip archives (the recbole wheel layout), never extracted."""

from __future__ import annotations

import glob
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fgjax.config import DataConfig
from fgjax.data import formats
from fgjax.data.reader import read_events
from fgjax.errors import DataError, FgjaxError

from test_data_formats import INTER, ITEM, ML100K

WHEEL_CANDIDATES = [os.environ.get("FGJAX_RECBOLE_WHEEL", ""), *glob.glob(str(ML100K.parent / "recbole-1.2.1-*.whl"))]
WHEEL = next((Path(p) for p in WHEEL_CANDIDATES if p and Path(p).is_file()), None)
UDATA = "1\t10\t4\t881250949\n2\t10\t3\t881250950\n1\t12\t5\t881250951\n"
UITEM = "10|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n" \
        "12|Heat (1995)|01-Jan-1995||http://y|0|1|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|1|0\n"


def _zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


def test_recbole_files_in_a_wheel_like_zip(tmp_path):
    whl = _zip(tmp_path / "pkg-1.0-py3-none-any.whl", {
        "pkg/__init__.py": "",
        "pkg/dataset_example/d/d.inter": INTER,
        "pkg/dataset_example/d/d.item": ITEM,
    })
    log = read_events(DataConfig(path=str(whl)))
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "d.inter").write_text(INTER)
    (folder / "d.item").write_text(ITEM)
    plain = read_events(DataConfig(format="recbole", path=str(folder)))
    for name in ("user", "item", "timestamp", "weight", "item_category"):
        np.testing.assert_array_equal(getattr(log, name), getattr(plain, name))
    assert log.categories.values.to_pylist() == ["Action", "Animation"]
    assert log.report.rows_read == 3 and log.report.rows_used == 3
    assert not (tmp_path / "pkg").exists()  # nothing extracted
    # The explicit format works too; a clashing one is a one-line error.
    assert read_events(DataConfig(format="recbole", path=str(whl))).num_events == 3
    with pytest.raises(DataError, match="holds recbole files, not data.format=movielens"):
        read_events(DataConfig(format="movielens", path=str(whl)))


def test_movielens_files_in_a_zip(tmp_path):
    archive = _zip(tmp_path / "ml.zip", {"ml-100k/u.data": UDATA, "ml-100k/u.item": UITEM, "ml-100k/README": "x"})
    log = read_events(DataConfig(path=str(archive)))
    assert log.users.values.to_pylist() == [1, 2] and log.items.values.to_pylist() == [10, 12]
    assert log.categories.decode(log.item_category).to_pylist() == ["Animation", "Action"]
    assert log.timestamp.tolist() == [881250949.0, 881250950.0, 881250951.0]


def test_zip_without_a_dataset_or_with_two(tmp_path):
    with pytest.raises(DataError, match=r"holds no RecBole \.inter file and no MovieLens u\.data"):
        read_events(DataConfig(path=str(_zip(tmp_path / "a.zip", {"x.txt": "hi"}))))
    two = _zip(tmp_path / "b.zip", {"a/a.inter": INTER, "b/b.inter": INTER})
    with pytest.raises(DataError, match="several recbole event files"):
        read_events(DataConfig(path=str(two)))


def test_bad_member_names_the_archive_and_member(tmp_path):
    bad = _zip(tmp_path / "c.zip", {"c/c.inter": "user_id\titem_id\n1\t2\n"})
    with pytest.raises(FgjaxError, match=r"c\.zip!c/c\.inter"):
        read_events(DataConfig(path=str(bad)))


@pytest.mark.skipif(WHEEL is None or not (ML100K / "ml-100k.inter").is_file(),
                    reason="recbole-1.2.1 wheel (FGJAX_RECBOLE_WHEEL) or ml-100k not present")
def test_recbole_wheel_matches_the_atomic_files():
    from_wheel = read_events(DataConfig(path=str(WHEEL)))
    from_folder = read_events(DataConfig(format="recbole", path=str(ML100K)))
    assert from_wheel.report.rows_used == 100_000 and (from_wheel.num_users, from_wheel.num_items) == (943, 1682)
    for name in ("user", "item", "timestamp", "item_category"):
        np.testing.assert_array_equal(getattr(from_wheel, name), getattr(from_folder, name))
    assert formats.find_zip_dataset(WHEEL)[1].member == "recbole/dataset_example/ml-100k/ml-100k.inter"
