"""The pieces of train.py's loop that are libraries of their own (issue 4): optimizers and
learning-rate schedules so far. Functions take explicit arguments; gin binds them in train.py."""
