"""The retrieval-quality gate: a labelled evaluation set over Linux man pages, and the runner behind `make eval`."""
