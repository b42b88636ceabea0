"""Parts of bench/gpu_check.py (the trainer on a real GPU)."""
