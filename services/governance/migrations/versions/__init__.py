"""Migration scripts, oldest first (``v<NNNN>_<what>.py``)."""
