"""Code that runs inside the guest."""
