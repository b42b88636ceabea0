"""``python -m stoker.worker.shards write|info``: write a sharded token dataset, or show one.

    python -m stoker.worker.shards write --tokenizer bytes --seq-len 1024 --shard-samples 65536 \\
        [--val-samples 512] corpus/*.txt s3://bucket/datasets/corpus-v1
    python -m stoker.worker.shards info s3://bucket/datasets/corpus-v1

S3 endpoint and credentials come from AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION (as for checkpoints).
"""
from __future__ import annotations

import argparse
import logging
import sys

from . import index as fmt
from .storage import open_prefix
from .writer import TOKENIZERS, WriteError, write_dataset


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stoker.worker.shards", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="tokenize text files into a dataset (index.json is written last)")
    w.add_argument("--tokenizer", default="bytes", help=f"one of {', '.join(TOKENIZERS)} (default bytes)")
    w.add_argument("--seq-len", type=int, required=True, help="tokens per sample (each sample stores seq_len + 1)")
    w.add_argument("--shard-samples", type=int, default=65536, help="samples per shard file (default 65536)")
    w.add_argument("--val-samples", type=int, default=0,
                   help="the first N samples form the val split under val/ (default 0: no val split)")
    w.add_argument("--block-samples", type=int, default=None,
                   help="rows per hashed block (checks ranged reads; default: about 16 KiB, at most 256 per shard)")
    w.add_argument("paths", nargs="+", metavar="INPUT... TARGET",
                   help="text files, then the target: s3://BUCKET/PREFIX or a local directory")
    i = sub.add_parser("info", help="print a dataset's index")
    i.add_argument("uri")
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parser().parse_args(argv)
    if args.command == "info":
        raw = open_prefix(args.uri).read_bytes(fmt.INDEX)
        if raw is None:
            print(f"{args.uri}: no {fmt.INDEX} (not a dataset, or its writer has not finished)", file=sys.stderr)
            return 1
        sys.stdout.write(raw.decode())
        return 0
    if len(args.paths) < 2:
        print("write: name one or more text files and then the target (s3://BUCKET/PREFIX or a directory)",
              file=sys.stderr)
        return 2
    *inputs, target = args.paths
    try:
        idx = write_dataset(inputs, target, seq_len=args.seq_len, shard_samples=args.shard_samples,
                            tokenizer=args.tokenizer, val_samples=args.val_samples,
                            block_samples=args.block_samples)
    except WriteError as exc:
        print(f"write: {exc}", file=sys.stderr)
        return 2
    print(f"{target}: {idx.samples('train')} train + {idx.samples('val')} val samples of {idx.seq_len + 1} tokens "
          f"in {sum(len(s) for s in idx.splits.values())} shards")
    return 0


if __name__ == "__main__":
    sys.exit(main())
