"""Policies and value functions as init/apply pairs."""
