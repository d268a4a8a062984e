"""`fitmm data {check,synth,split,download,encode-text}`: handlers raise DataError on bad input (exit code 2 in fitmm.cli)."""

from __future__ import annotations

import argparse

from fitmm.data.dataset import Interactions
from fitmm.data.download import DATASETS


def print_stats(data: Interactions) -> None:
    s = data.stats()
    print(f"dataset       {s['name']} ({data.path})")
    print(f"users         {s['users']:,}")
    print(f"items         {s['items']:,}")
    print(f"interactions  {s['interactions']:,} (train {s['n_train']:,} / valid {s['n_valid']:,} / test {s['n_test']:,})")
    print(f"density       {s['density']:.6f}")
    print(f"cold items    {s['cold_items']:,} valid/test items never in train, holding "
          f"{s['cold_valid_share']:.2%} of valid rows ({s['cold_valid_rows']:,}) and "
          f"{s['cold_test_share']:.2%} of test rows ({s['cold_test_rows']:,})")
    if not s["modalities"]:
        print("modalities    none")
    for m, dim in s["modalities"].items():
        print(f"modality      {m}: {dim}-d")


def _check(args: argparse.Namespace) -> int:
    from fitmm.data.loader import load_dataset

    print_stats(load_dataset(args.path))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from fitmm.data.loader import load_dataset
    from fitmm.data.synthetic import generate

    print_stats(load_dataset(generate(args.out, args.name, args.users, args.items, args.seed)))
    return 0


def _split(args: argparse.Namespace) -> int:
    from fitmm.data.split import split_file

    print(f"wrote {split_file(args.src, args.out, args.seed)}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from fitmm.data.download import download

    print(f"downloaded {download(args.name, args.to)}")
    return 0


def _encode_text(args: argparse.Namespace) -> int:
    import time

    from fitmm.data.text import encode_text

    t0 = time.perf_counter()
    out = encode_text(args.path, args.column, args.out, batch_size=args.batch_size)
    print(f"wrote {out / 'text_feat.npy'} in {time.perf_counter() - t0:.1f} s")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data` command and its subcommands (each sets `func`)."""
    data = subparsers.add_parser("data", help="check, generate, split or download MMRec-format datasets")
    sub = data.add_subparsers(dest="data_command", required=True)

    check = sub.add_parser("check", help="validate a dataset folder DIR/NAME and print its statistics")
    check.add_argument("path", metavar="DIR/NAME")
    check.set_defaults(func=_check)

    synth = sub.add_parser("synth", help="write the synthetic benchmark to OUT/NAME")
    synth.add_argument("out", metavar="OUT")
    synth.add_argument("--name", default="synthetic")
    synth.add_argument("--users", type=int, default=1000, help="users before the 5-core filter")
    synth.add_argument("--items", type=int, default=600, help="items before the 5-core filter")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_synth)

    split = sub.add_parser("split", help="label a userID/itemID table by MMRec's split rule into OUT_DIR/NAME/NAME.inter")
    split.add_argument("src", metavar="IN")
    split.add_argument("out", metavar="OUT_DIR/NAME")
    split.add_argument("--seed", type=int, default=999, help="shuffle seed (default: MMRec's 999)")
    split.set_defaults(func=_split)

    download = sub.add_parser("download", help="fetch an official MMRec dataset (needs internet)")
    download.add_argument("name", choices=DATASETS)
    download.add_argument("--to", required=True, metavar="DIR")
    download.set_defaults(func=_download)

    text = sub.add_parser("encode-text", help="encode DIR/NAME/item_text.tsv into text_feat.npy (all-MiniLM-L6-v2, offline)")
    text.add_argument("path", metavar="DIR/NAME")
    text.add_argument("--column", action="append", required=True, help="text column (repeatable; joined with ' | ')")
    text.add_argument("--out", default=None, metavar="DIR/NAME2",
                      help="output dataset folder (default: DIR/NAME itself); the .inter file is copied there")
    text.add_argument("--batch-size", type=int, default=128)
    text.set_defaults(func=_encode_text)
