"""Malformed inputs the data layer must refuse with a clear message (exit 2, nothing written), or accept unchanged:
huge ids, fields beyond the header, non-.npy and empty feature files, symlink problems, bad labels, non-UTF-8 text."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fitmm.cli import main
from fitmm.data import get_dataset, load_dataset
from fitmm.errors import DataError

from conftest import file_states

HEADER = "userID\titemID\tx_label"
# 3 users x 3 items; user 0 has train, valid and test rows.
ROWS = ["0\t0\t0", "0\t1\t1", "0\t2\t2", "1\t1\t0", "1\t2\t0", "2\t0\t0", "2\t2\t1"]


def write_folder(folder: Path, lines=ROWS, header=HEADER, raw: bytes | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = ("\n".join([header, *lines]) + "\n").encode()
    (folder / f"{folder.name}.inter").write_bytes(text if raw is None else raw)
    return folder


def assert_refused(path: Path, root: Path, expected: list[str], absent: list[str], capsys) -> None:
    """load_dataset raises a DataError naming `expected`; `fitmm data check` exits 2 with it and writes nothing."""
    with pytest.raises(DataError) as err:
        load_dataset(path)
    msg = str(err.value)
    for part in expected:
        assert part in msg, (part, msg)
    for part in absent:
        assert part not in msg, (part, msg)
    before = file_states(root)
    capsys.readouterr()
    assert main(["data", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and msg in captured.err
    assert file_states(root) == before


# ---------------------------------------------------------------- ids beyond any row


@pytest.mark.parametrize("column, value, allowed", [
    ("userID", "3000000000", "0..6"),
    ("itemID", "1" + "0" * 23, "0..6"),
    ("userID", str(2**63 - 1), "0..6"),
    ("itemID", str(2**63), "0..6"),
    ("itemID", str(2**64 - 1), "0..6"),
    ("userID", "7", "0..6"),
])
def test_id_beyond_the_rows_is_refused_before_any_allocation(tmp_path, capsys, column, value, allowed):
    row = f"{value}\t2\t1" if column == "userID" else f"2\t{value}\t1"
    path = write_folder(tmp_path / "toy", ROWS[:-1] + [row])
    tracemalloc.start()
    with pytest.raises(DataError):
        load_dataset(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50e6
    assert_refused(path, tmp_path, ["toy.inter", "line 8", f"column {column}", value, f"expected {allowed}",
                                    "number of data rows, 7"], ["negative"], capsys)


def test_negative_id_is_named(tmp_path, capsys):
    path = write_folder(tmp_path / "toy", ROWS[:-1] + ["2\t-4\t1"])
    assert_refused(path, tmp_path, ["line 8", "column itemID", "negative id -4", "expected 0..6"], [], capsys)


@pytest.mark.parametrize("value, expected", [
    ("-1", "unknown label -1; expected 0 (train), 1 (valid) or 2 (test)"),
    ("3", "unknown label 3; expected 0 (train), 1 (valid) or 2 (test)"),
    (str(2**64), f"{2**64} does not fit a 64-bit integer"),
])
def test_bad_label_is_unknown_not_a_negative_id(tmp_path, capsys, value, expected):
    path = write_folder(tmp_path / "toy", ROWS[:-1] + [f"2\t2\t{value}"])
    assert_refused(path, tmp_path, ["line 8", "column x_label", expected], ["negative id"], capsys)


# ---------------------------------------------------------------- fields beyond the header


@pytest.mark.parametrize("header, lines", [
    (HEADER, [r + "\t" for r in ROWS]),                    # a trailing tab on every row
    (HEADER + "\t", [r + "\t" for r in ROWS]),             # ... and on the header
    (HEADER, [r + "\t\t" for r in ROWS]),                  # two empty fields
    (HEADER, ROWS[:3] + [r + "\t" for r in ROWS[3:]]),     # on some rows only
    (HEADER, [r + "\t\r" for r in ROWS]),                  # Windows line ends
    (HEADER + "\trating", [r + "\t5\t" for r in ROWS]),    # an ignored column, then a trailing tab
])
def test_empty_fields_beyond_the_header_are_accepted_without_shifting(tmp_path, header, lines):
    data = load_dataset(write_folder(tmp_path / "toy", lines, header))
    clean = load_dataset(write_folder(tmp_path / "clean" / "toy"))
    for split in ("train", "valid", "test"):
        assert np.array_equal(data.pairs(split), clean.pairs(split))


@pytest.mark.parametrize("lines, line, field", [
    ([r + "\t9" for r in ROWS], 2, "field 4 holds '9'"),          # one extra field on every row
    ([r + "\t9\t9" for r in ROWS], 2, "field 4 holds '9'"),
    (ROWS[:4] + ["1\t2\t0\t\tx"] + ROWS[5:], 6, "field 5 holds 'x'"),
    (ROWS[:2] + [""] + ROWS[2:4] + ["1\t2\t0\t7"] + ROWS[5:], 7, "field 4 holds '7'"),  # a blank line before
])
def test_a_value_beyond_the_header_names_its_line(tmp_path, capsys, lines, line, field):
    path = write_folder(tmp_path / "toy", lines)
    assert_refused(path, tmp_path, [f"line {line}:", field, "beyond the header's 3 fields",
                                    "expected at most 3 fields per line"], [], capsys)


def test_errors_after_trailing_tabs_name_the_right_line(tmp_path, capsys):
    lines = [r + "\t" for r in ROWS[:2] + ["0\tx\t2"] + ROWS[3:]]
    path = write_folder(tmp_path / "toy", lines)
    assert_refused(path, tmp_path, ["line 4, column itemID: 'x' is not an integer"], [], capsys)


# ---------------------------------------------------------------- text encoding


@pytest.mark.parametrize("raw, expected", [
    (b"userID\titemID\tx_label\n0\t0\t0\n1\t2\xff\t0\n", ["line 3, column itemID, character 4", "0xff"]),
    (b"userID\titemID\tx_label\n0\t0\t0\n1\t1\t0\t\xe9t\xe9\n", ["line 3, character 7", "0xe9"]),
    (b"user\xc3ID\titemID\tx_label\n0\t0\t0\n", ["line 1, character 5", "0xc3"]),
])
def test_non_utf8_text_names_line_and_character(tmp_path, capsys, raw, expected):
    path = write_folder(tmp_path / "toy", raw=raw)
    assert_refused(path, tmp_path, ["toy.inter", *expected, "not valid UTF-8"], [], capsys)


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    path = write_folder(tmp_path / "toy", raw=b"\xef\xbb\xbf" + ("\n".join([HEADER, *ROWS]) + "\n").encode())
    assert load_dataset(path).n_users == 3


# ---------------------------------------------------------------- feature files


@pytest.mark.parametrize("write, expected, absent", [
    (lambda p: p.write_text("0.1 0.2\n0.3 0.4\n0.5 0.6\n"), ["not a NumPy .npy file", "magic", "b'0.1 0.'"],
     ["allow_pickle"]),
    (lambda p: np.savez(p.with_suffix(".npz"), np.ones((3, 2))) or p.with_suffix(".npz").rename(p),
     ["not a NumPy .npy file", "b'PK"], ["allow_pickle"]),
    (lambda p: np.save(p, np.zeros((3, 0), np.float32)), ["shape (3, 0)", "no feature columns", "d >= 1"], []),
    (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00"), ["unreadable .npy file"], []),
])
def test_bad_feature_file_is_named(tmp_path, capsys, write, expected, absent):
    path = write_folder(tmp_path / "toy")
    write(path / "image_feat.npy")
    assert_refused(path, tmp_path, ["image_feat.npy", *expected], absent, capsys)


# ---------------------------------------------------------------- symlinks


@pytest.mark.parametrize("link, target, expected", [
    ("toy/toy.inter", "toy.inter", "symlink loop (toy.inter -> toy.inter"),
    ("toy/toy.inter", "other.inter", "broken symlink to other.inter"),
    ("toy/image_feat.npy", "image_feat.npy", "symlink loop (image_feat.npy -> image_feat.npy"),
    ("toy/image_feat.npy", "a.npy", "broken symlink to a.npy"),
])
def test_symlink_problems_are_not_called_missing_files(tmp_path, capsys, link, target, expected):
    folder = write_folder(tmp_path / "toy")
    (tmp_path / link).unlink(missing_ok=True)
    os.symlink(target, tmp_path / link)
    assert_refused(folder, tmp_path, [link.split("/")[1], expected], ["not found"], capsys)


def test_dataset_folder_symlink_loop(tmp_path, capsys):
    os.symlink("toy", tmp_path / "toy")
    assert_refused(tmp_path / "toy", tmp_path, ["symlink loop (toy -> toy"], ["not found"], capsys)
    with pytest.raises(DataError, match="symlink loop"):
        get_dataset("toy", tmp_path)


# ---------------------------------------------------------------- `data split` reads tables the same way


@pytest.mark.parametrize("lines, expected", [
    (["0\t0", "0\t1", "1\t0", "3000000000\t1"], ["line 5", "column userID", "id out of range: 3000000000"]),
    (["0\t0\t9", "0\t1\t9"], ["line 2:", "field 3 holds '9'"]),
    (["0\t0", "0\t1", "1\t\xff"], ["line 4, column itemID, character 3"]),
])
def test_split_refuses_the_same_tables_and_writes_nothing(tmp_path, capsys, lines, expected):
    src = tmp_path / "in.tsv"
    src.write_bytes(("\n".join(["userID\titemID", *lines]) + "\n").encode("latin-1"))
    assert main(["data", "split", str(src), str(tmp_path / "out" / "mine")]) == 2
    err = capsys.readouterr().err
    for part in ["in.tsv", *expected]:
        assert part in err, (part, err)
    assert [p.name for p in tmp_path.iterdir()] == ["in.tsv"]


def test_split_keeps_columns_of_rows_with_a_trailing_tab(tmp_path):
    src = tmp_path / "in.tsv"
    lines = [f"{u}\t{i}\t{u + i}\t" for u in range(3) for i in range(4)]
    src.write_text("\n".join(["userID\titemID\trating", *lines]) + "\n")
    assert main(["data", "split", str(src), str(tmp_path / "out" / "mine"), "--seed", "1"]) == 0
    data = load_dataset(tmp_path / "out" / "mine")
    assert (data.n_users, data.n_items) == (3, 4)
    written = (tmp_path / "out" / "mine" / "mine.inter").read_text().splitlines()
    assert written[0] == "userID\titemID\trating\tx_label"
    assert [r.split("\t")[:3] for r in written[1:]] == [r.split("\t")[:3] for r in lines]


# ---------------------------------------------------------------- items never seen in train


def test_cold_items_counted_in_stats_and_check(tmp_path, capsys):
    # Items 3 (one valid row) and 4 (two test rows) never occur in train.
    path = write_folder(tmp_path / "toy", ROWS[:-1] + ["2\t3\t1", "1\t4\t2", "0\t4\t2"])
    stats = load_dataset(path).stats()
    assert {k: stats[k] for k in ("cold_items", "cold_valid_rows", "cold_test_rows")} == \
        {"cold_items": 2, "cold_valid_rows": 1, "cold_test_rows": 2}
    assert (stats["cold_valid_share"], stats["cold_test_share"]) == pytest.approx((1 / 2, 2 / 3))
    assert main(["data", "check", str(path)]) == 0
    assert ("cold items    2 valid/test items never in train, holding 50.00% of valid rows (1) "
            "and 66.67% of test rows (2)") in capsys.readouterr().out
    assert load_dataset(write_folder(tmp_path / "warm" / "toy")).cold_items() == {
        "cold_items": 0, "cold_valid_rows": 0, "cold_valid_share": 0.0, "cold_test_rows": 0, "cold_test_share": 0.0}
