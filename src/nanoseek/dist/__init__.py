"""Distributed training: FSDP2, expert parallelism, pipeline parallelism (1F1B / DualPipeV), DCP."""
