"""AdMRL itself: the task gradient, the adversary and Algorithm 1
(Lin et al. 2020, arXiv:2006.08875)."""
