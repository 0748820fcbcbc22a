"""Measuring models, apart from running them: perplexity (the AWQ/GPTQ-paper protocol), teacher-forced accuracy
and PCC (tt-metal's metrics), parity between engines, benchmark timing and the per-module / per-step profiler."""
