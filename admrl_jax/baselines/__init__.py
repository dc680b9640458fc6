"""Meta-RL baselines the paper compares AdMRL with, as pure JAX algorithms.

`maml`: MAML-TRPO (Finn et al. 2017, arXiv:1703.03400).
`pearl`, `sac`: PEARL (Rakelly et al. 2019, arXiv:1903.08254) and its
soft actor-critic pieces.
"""
