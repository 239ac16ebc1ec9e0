"""Multiverse (arXiv 2506.09991): parallel reasoning written as <Parallel>/<Path> blocks."""
