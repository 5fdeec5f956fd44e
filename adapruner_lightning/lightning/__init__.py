"""Layer 6: the Lightning integration (callback, planning, recovery, module, datamodule, report, compat)."""
