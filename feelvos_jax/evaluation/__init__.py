"""VOS evaluation: J and F per frame, the protocols, the result tables.

Reproduces the official davis2017-evaluation tool (semi-supervised task); `protocols` decides
which objects are scored on which frames (DAVIS 2017, or the YouTube-VOS convention for
objects that appear mid-video); see `metrics`, `videos` and `davis_files` for the exact
semantics; `writers` writes predictions in the DAVIS and YouTube-VOS layouts. What is
re-exported here is NumPy/SciPy only, no JAX; `split_evaluation` (propagate and score a dataset
split with a model) is imported on its own.
"""
from feelvos_jax.evaluation.davis_files import evaluate_predictions
from feelvos_jax.evaluation.davis_files import evaluate_sequence
from feelvos_jax.evaluation.davis_files import format_results
from feelvos_jax.evaluation.davis_files import format_table
from feelvos_jax.evaluation.davis_files import write_results_csv
from feelvos_jax.evaluation.metrics import boundary_f_measure
from feelvos_jax.evaluation.metrics import boundary_map
from feelvos_jax.evaluation.metrics import region_similarity
from feelvos_jax.evaluation.protocols import DAVIS_2017
from feelvos_jax.evaluation.protocols import protocol_for
from feelvos_jax.evaluation.protocols import score_video
from feelvos_jax.evaluation.protocols import YOUTUBE_VOS
from feelvos_jax.evaluation.statistics import mean_recall_decay
from feelvos_jax.evaluation.videos import davis_object_ids
from feelvos_jax.evaluation.videos import evaluate_arrays
from feelvos_jax.evaluation.videos import evaluate_video
from feelvos_jax.evaluation.videos import GLOBAL_COLUMNS
from feelvos_jax.evaluation.videos import PER_SEQUENCE_COLUMNS
from feelvos_jax.evaluation.videos import summarize
from feelvos_jax.evaluation.videos import VideoScores

__all__ = ["DAVIS_2017", "GLOBAL_COLUMNS", "PER_SEQUENCE_COLUMNS", "VideoScores", "YOUTUBE_VOS",
           "boundary_f_measure", "boundary_map", "davis_object_ids", "evaluate_arrays",
           "evaluate_predictions", "evaluate_sequence", "evaluate_video", "format_results",
           "format_table", "mean_recall_decay", "protocol_for", "region_similarity",
           "score_video", "summarize", "write_results_csv"]
