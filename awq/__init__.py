"""AWQ, the algorithm (calibration, scale and clip search, folding, RTN baseline, layer-by-layer streaming).

Works on float modules through fake quantization and never touches packed storage: it hands `QuantizedWeight`s
(codes, scales, zeros) to a sink (checkpoints/). Module names and scaling groups come from the family table
(runtime/families.py). `run_awq quantize` drives it (tasks/quantize.py); docs/quantization.md states the method.
"""
