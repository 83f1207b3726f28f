"""Matching of pixel embeddings: FEELVOS's global and local matching maps and their variants.

Modules: `distances` (the FEELVOS distance, rescaled squared distances, argument checks),
`global_maps` (global matching, dense nearest distances for few references), `sharded` (global
matching split over a mesh axis with `jax.shard_map`), `fused` (the Pallas kernel of global matching
on CUDA), `local_maps` (windowed local matching), `cfbi` (CFBI's background matching, fg/bg bias,
multi-local windows, atrous references, instance guidance), `incremental` (local matching from
stored pair distances and marked cells, for interactive re-propagation), `memory_read` (STM's
space-time memory read, chunked, and its `jax.shard_map` form).

The public API contract re-exported here: `pairwise_distance`, `global_matching`,
`local_matching` (see the design notes for their shapes), plus `global_matching_sharded`,
`select_reference_pixels`, `nearest_squared_distance`, `pairwise_squared_distance`,
`distance_from_squared` and `check_labels`.
"""
from feelvos_jax.matching.distances import check_labels
from feelvos_jax.matching.distances import distance_from_squared
from feelvos_jax.matching.distances import pairwise_distance
from feelvos_jax.matching.distances import pairwise_squared_distance
from feelvos_jax.matching.global_maps import global_matching
from feelvos_jax.matching.global_maps import nearest_squared_distance
from feelvos_jax.matching.global_maps import select_reference_pixels
from feelvos_jax.matching.local_maps import local_matching
from feelvos_jax.matching.sharded import global_matching_sharded

__all__ = ["check_labels", "distance_from_squared", "global_matching", "global_matching_sharded",
           "local_matching", "nearest_squared_distance", "pairwise_distance",
           "pairwise_squared_distance", "select_reference_pixels"]
