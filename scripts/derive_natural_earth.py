"""Derive the boundaries shipped in ``gazetteer/data/`` from Natural Earth.

The package cannot read ``../shared/`` at run time (it does not ship), so this script turns the
Natural Earth GeoPackage into two small GeoParquet files,
simplified to about 1 km and snapped to a 0.001° grid:

    gazetteer/data/admin0.parquet   country polygons: code, name, geometry
    gazetteer/data/admin1.parquet   admin-1 polygons: code (ISO alpha-2 of the country), name,
                                    geometry

Only the ISO alpha-2 column and a name column are kept: the builder assigns polygons to
GeoNames entities by a spatial join of places, so nothing else of Natural Earth's schema is
needed (see ``gazetteer/boundaries.py``).

Usage::

    python scripts/derive_natural_earth.py [--src ../shared/data/natural_earth/world_map.gpkg]
                                           [--tolerance 0.01]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import geopandas as gpd
import shapely

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "natural_earth" / "world_map.gpkg"
OUT = ROOT / "gazetteer" / "data"

LAYERS = {
    # output name: (layer in the GeoPackage, code column, name column)
    "admin0": ("countries", "iso_a2", "NAME"),
    "admin1": ("states_provinces", "iso_a2", "name"),
}


def derive(src: Path, tolerance: float, grid: float) -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    summary = {
        "source": "Natural Earth 1:10m v4.1.0, generalised "
        "(Debian qgis-common's world_map.gpkg)",
        "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
        "tolerance_deg": tolerance,
        "grid_deg": grid,
        "layers": {},
    }
    for out_name, (layer, code_col, name_col) in LAYERS.items():
        gdf = gpd.read_file(src, layer=layer)
        before = int(shapely.get_num_coordinates(gdf.geometry.values).sum())
        geom = shapely.simplify(gdf.geometry.values, tolerance, preserve_topology=True)
        # Snap to a grid far finer than the simplification: halves the file (zstd packs the
        # repeated digits) and removes near-duplicate vertices.
        geom = shapely.set_precision(geom, grid, mode="pointwise")
        geom = shapely.make_valid(geom)
        # make_valid may return collections with stray lines; keep the polygonal part only.
        geom = [_polygonal(g) for g in geom]
        out = gpd.GeoDataFrame(
            {"code": gdf[code_col].astype(str), "name": gdf[name_col].astype(str)},
            geometry=geom,
            crs=gdf.crs,
        )
        out = out[~out.geometry.is_empty].reset_index(drop=True)
        path = OUT / f"{out_name}.parquet"
        out.to_parquet(path, compression="zstd", index=False)
        after = int(shapely.get_num_coordinates(out.geometry.values).sum())
        summary["layers"][out_name] = {
            "layer": layer,
            "features": len(out),
            "vertices_before": before,
            "vertices_after": after,
            "bytes": path.stat().st_size,
        }
    (OUT / "boundaries.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _polygonal(g):
    if g.geom_type in ("Polygon", "MultiPolygon"):
        return g
    parts = [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC)
    ap.add_argument("--tolerance", type=float, default=0.01, help="degrees (0.01 ~ 1 km)")
    ap.add_argument("--grid", type=float, default=0.001, help="coordinate grid, degrees")
    args = ap.parse_args(argv)
    print(json.dumps(derive(args.src, args.tolerance, args.grid), indent=2))


if __name__ == "__main__":
    main()
