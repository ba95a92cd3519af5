"""Metrics: OSV-5M's, value for value (degrees at the interface), entity top-k accuracy from
predicted paths, and the per-country table.

    from hiergeo import metrics
    metrics.haversine_km(lat1, lon1, lat2, lon2)      # km
    metrics.geoscore(km)                              # 5000 * exp(-km / 1492.7)
    metrics.osv5m_hits(pred_lat, pred_lon, truth)     # country/region/sub-region/city hits
    metrics.osv5m_summary(pred_lat, pred_lon, truth)  # every OSV-5M metric
"""

from .osv5m import (
    THRESHOLDS_KM,
    check_predictions,
    geoscore,
    haversine_km,
    hits_from_keys,
    osv5m_hits,
    osv5m_summary,
    predicted_keys,
    truth_keys,
)
from .tables import (
    PointScores,
    entity_accuracy,
    has_labels,
    markdown_table,
    per_country,
    score_points,
    with_truth_keys,
)

__all__ = ["THRESHOLDS_KM", "PointScores", "check_predictions", "entity_accuracy", "geoscore",
           "has_labels", "haversine_km", "hits_from_keys", "markdown_table", "osv5m_hits",
           "osv5m_summary", "per_country", "predicted_keys", "score_points", "truth_keys",
           "with_truth_keys"]
