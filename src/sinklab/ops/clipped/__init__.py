"""clipped attention: naive.py (the definition) and chunked.py (CPU fast path)."""
