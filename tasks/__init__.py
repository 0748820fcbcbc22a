"""The tasks behind the `run_awq` subcommands: orchestration of runtime, awq, checkpoints and backends."""
