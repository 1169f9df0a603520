"""`diabetica-jax run`: the whole Diabetica pipeline (curate, train, evaluate, export) from one YAML."""
