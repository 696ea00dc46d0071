"""Differential soundness harness (issue 11): random (network, region, spec) triples, every registered
certifier, and oracles that share no code with what they check.

Layout: :mod:`.strategies` (descriptions of networks, regions and specs, what builds torch modules and gcert
problems from them, hypothesis strategies), :mod:`.oracle_exact` (exact rational arithmetic and an own exact
line), :mod:`.oracle_grid` (dense float64 forward passes of the torch module), :mod:`.oracle_vnnlib` (an own
VNN-LIB s-expression evaluator), :mod:`.oracle_marabou` (Marabou, the independent complete verifier of
adapters/marabou, judged as a complete certifier), :mod:`.harness` (running certifiers, judging their
answers, the run summary).
"""
