"""Training: the state, the optimizer, the fused steps, and the loop around them.

Files: `state.py` (TrainState), `optimizer.py` (Adam and the milestone schedule),
`steps.py` (the fused per-block train step, the reference step, eval), `loop.py`
(`train_and_evaluate`), `config.py` (validation, the model a config names), `metrics.py`
(fetching and checking metrics), `metric_writer.py` (metrics.jsonl and TensorBoard),
`resume.py`, `checkpoints.py` (Orbax), `sharding.py` (the data-parallel mesh),
`stages.py` and `pipeline.py` (pipelined training over a stage x data mesh).
"""
