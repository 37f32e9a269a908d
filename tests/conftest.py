import atexit
import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings

# Compiling is most of the suite's time (each test builds small programs of its own), and most of a CPU compile
# is LLVM optimising the machine code. At LLVM's -O0, XLA's own HLO passes (fusion, layout, the algebra) still
# run and results keep IEEE semantics; only float rounding may differ where the machine code differs (tests that
# compare two differently compiled programs use float32 tolerances, never bit equality). ~35% less CPU.
# Set before JAX is imported (by this process, its pytest-xdist workers and the subprocesses tests start,
# which inherit the environment; those that set XLA_FLAGS themselves append to it).
FAST_COMPILE = "--xla_backend_optimization_level=0"
if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

# One persistent compilation cache for this run's processes (the pytest-xdist workers and the subprocesses
# tests start inherit the variables), in a fresh directory removed at exit: many small programs (PRNG,
# conversions, the selection of a common shape) are compiled by every process otherwise. Fresh each run, so a
# run's time is what a new machine sees; entries of every size and compile time are kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxprune-tests-xla-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

# JAX compiles per shape, so property tests are slower per example than usual;
# a fixed, moderate budget keeps the suite within minutes on 2 cores.
settings.register_profile(
    "jaxprune",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("jaxprune")
