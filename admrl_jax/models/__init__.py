"""Learned dynamics (SLBO): running normalisers and the MLP model, fitted."""
