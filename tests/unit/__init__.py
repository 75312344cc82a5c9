# Makes tests/unit a package so its module names (unit.test_spec, ...) cannot collide
# with same-named modules under tests/integration.
