"""Recipe of the bundled demo model: procedural sound effects, an analytic evaluator, and the VAE, teacher and
student stages (see README.md). Run the stages from the repository root as `python -m recipes.procedural.<stage>`."""
