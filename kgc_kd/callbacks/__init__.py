"""Lightning callbacks that drive stage modules (the only layer above `lit`, below the entry points)."""
