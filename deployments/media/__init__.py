"""The GPU media stages (ImageGen, Vision) and their HTTP routes."""
