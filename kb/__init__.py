"""kb: answers about neural-network fundamentals, backed by executable NumPy evidence."""
