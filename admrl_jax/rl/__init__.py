"""Roll-outs (real and virtual), datasets, returns and policy optimisation."""
