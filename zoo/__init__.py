"""The gcert model zoo (installed as ``gcert_zoo``): manifest, weights, sample inputs and the code that rebuilds them."""
