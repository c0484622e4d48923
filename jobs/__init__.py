"""Background work: the procrastinate app, its tasks and the delivery providers."""
