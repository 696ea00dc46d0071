"""The gcert model zoo (installed as ``gcert_zoo``): manifest, weights, samples and the code that rebuilds them."""
