"""The pieces of train.py's loop that are libraries of their own: optimizers and schedules,
the train state and steps, the resumable data stream, checkpoints, metrics logging, inference
evaluation and infer-to-JSONL. Functions take explicit arguments; gin binds them in train.py."""
