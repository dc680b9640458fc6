"""TEMPORARY shim while experiments/checkpoints.py is being edited."""
from experiments.checkpoints import *  # noqa
