"""Inference with a finished run: the fold ensemble on stored features or re-extracted clips."""
