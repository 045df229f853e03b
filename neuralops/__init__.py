"""NeuralOps core: the domain logic, free of Prefect (except the CLI and the run-logger hook)."""

__version__ = "0.1.0"
