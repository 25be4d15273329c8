"""`asrq sweep`: a grid of models x methods x bits x seeds, quantized and evaluated point by point, in this
process or on Ray, resumable, recorded in the run history the page reads (grid.py: the TOML file; point.py:
one point; runner.py: the executors; records.py: where the records go)."""
