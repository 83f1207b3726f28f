"""Command-line tools, each run as `python -m feelvos_jax.tools.<name>` from the repository root:
`evaluate` (score DAVIS-format predictions; also `python -m feelvos_jax.evaluate`), `visualize`
(strips and GIFs of predicted masks), `data_check` (convert a dataset, count it, draw a contact
sheet), `segment` (your own videos from given masks; also `python -m feelvos_jax.segment`, with
its helpers `video_io`, `given_masks` and `segment_outputs`). Training, evaluation and export of
a run go through `main.py`."""
