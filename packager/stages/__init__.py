"""Pipeline stages: one module each, one entry point `run(ctx)`."""
