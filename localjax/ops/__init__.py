"""Custom operations: the feedback-alignment matmul of the `bio` variant
(`feedback.py`) and the CPU convolution weight-gradient kernel (`conv_wgrad.py`)."""
