"""Built-in benchmark suites. Every module here is imported by
:func:`millkernels.bench.registry.discover` and registers its suites with ``@suite``."""
