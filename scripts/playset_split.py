"""Split the shared OSV-5M playset into photos to train on and photos to predict.

    python scripts/playset_split.py ../shared/images/osv5m_playset --out results/photos

Writes ``OUT/train.csv`` and ``OUT/heldout.csv`` (``id, path, latitude, longitude, credit``;
absolute paths): every fourth photo in id order is held out (40 of 163), the rest trained on.
163 photos are far too few to measure accuracy; they exercise the real path (JPEG ->
backbone -> model -> answer -> map) of ``make photos``. The photos are CC BY-SA 4.0 by their
Mapillary creators; ``credit`` names each one, and the map shows it beside the thumbnail.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("playset", type=Path, help="folder with labels.csv and {id}.jpg")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--every", type=int, default=4, help="hold out every N-th photo")
    args = ap.parse_args(argv)
    labels = args.playset / "labels.csv"
    if not labels.exists():
        print(f"error: {labels}: not found (the shared playset lives in "
              "../shared/images/osv5m_playset)", file=sys.stderr)
        return 2
    df = pd.read_csv(labels, dtype=str, keep_default_na=False)  # Namibia is "NA"
    df = df.sort_values("id").reset_index(drop=True)
    df["path"] = [str((args.playset / f"{i}.jpg").resolve()) for i in df["id"]]
    df["credit"] = [f"{c} (Mapillary, CC BY-SA 4.0)" for c in df.get("creator", "")]
    cols = ["id", "path", "latitude", "longitude", "credit"]
    held = df.index % args.every == args.every - 1
    args.out.mkdir(parents=True, exist_ok=True)
    df.loc[~held, cols].to_csv(args.out / "train.csv", index=False)
    df.loc[held, cols].to_csv(args.out / "heldout.csv", index=False)
    print(f"{args.out}/train.csv: {int((~held).sum())} photos; {args.out}/heldout.csv: "
          f"{int(held.sum())} photos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
