"""One module per experiment; each has ``run(protocol, work, seeds, smoke) -> dict``."""
