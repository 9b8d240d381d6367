"""XLA options for tests: XLA:CPU spends most of a small test compiling, and
tests check numbers, not speed, so they compile with the cheapest settings."""

FAST_COMPILE = {
    'exec_time_optimization_effort': -1.0,
    'xla_backend_optimization_level': 0,
    'xla_llvm_disable_expensive_passes': True
}
