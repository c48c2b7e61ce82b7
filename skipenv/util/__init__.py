"""Process-level utilities with no skipenv dependency: progress reporting in log files and quiet transformers
(:mod:`.progress`), the default PyTorch thread count (:mod:`.threads`), the one registry style (:mod:`.registry`).
Everything else in skipenv may import them; they import nothing of skipenv."""
