"""Ray Serve deployments and actors: thin hosts for the logic in `graph/` and the model backends."""
