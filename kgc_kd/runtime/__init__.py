"""Small runtime helpers every layer may use: atomic files, precision choice, device handling, process memory.
Imports nothing of kgc_kd (torch only where a helper needs it)."""
