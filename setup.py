"""Installs admrl_jax with the pinned dependencies of requirements.txt."""
import pathlib

from setuptools import find_packages, setup

_HERE = pathlib.Path(__file__).parent
_REQUIREMENTS = [
    line.strip()
    for line in (_HERE / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="admrl_jax",
    version="0.1.0",
    description="Model-based Adversarial Meta-Reinforcement Learning (AdMRL) in JAX",
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["admrl_jax", "admrl_jax.*", "experiments"]),
    python_requires=">=3.10",
    install_requires=_REQUIREMENTS,
    # Optional Weights & Biases logging (experiments.run --wandb_project).
    extras_require={"wandb": ["wandb==0.31.0"]},
)
