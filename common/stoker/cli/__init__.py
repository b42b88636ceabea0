"""The `stoker` / `kubectl stoker` command line (torch-free)."""
