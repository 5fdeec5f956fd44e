"""Layer 7: the ``adapruner`` command line (one module per command, dispatched by ``main``)."""
