import os

from hypothesis import HealthCheck, settings

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
