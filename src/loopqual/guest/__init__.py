"""Code that runs inside the guest (standard library and loopqual.common only)."""
