"""From photos to model inputs: robust image loading, EXIF GPS, dataset tables."""

from .images import LoadResult, load_image
from .records import read_exif_folder, read_osv5m, read_records, read_table

__all__ = ["LoadResult", "load_image", "read_exif_folder", "read_osv5m", "read_records",
           "read_table"]
