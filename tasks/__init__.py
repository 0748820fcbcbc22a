"""The tasks behind `run_awq --task ...`: orchestration of runtime, awq, checkpoints and backends."""
